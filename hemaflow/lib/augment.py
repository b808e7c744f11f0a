"""Training-time augmentation of image batches (flips, affine, blur, colour jitter), configured
by :data:`AUGMENT_SCHEMA`; used by :func:`hemaflow.lib.training.fit`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # pragma: no cover
    import torch


class AugmentConfig(TypedDict, total=False):
    flip: bool
    rot90: bool
    affine: float
    color_jitter: float
    blur: float


AUGMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "training-time augmentations; geometric ones move image and mask together, colour ones touch the image only",
    "properties": {
        "flip": {"type": "boolean", "default": True, "description": "random horizontal and vertical flips"},
        "rot90": {"type": "boolean", "default": True, "description": "random multiples of 90 degrees (square inputs)"},
        "affine": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0,
                   "description": "probability of a small random affine (rotation up to 15 deg, scale 0.9-1.1, shift up to 5%)"},
        "color_jitter": {"type": "number", "minimum": 0, "maximum": 0.5, "default": 0.1,
                         "description": "strength of random brightness/contrast/saturation changes (0 = off)"},
        "blur": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.0,
                 "description": "probability of a light Gaussian blur (sigma 0.5-1.2 px)"},
    },
    "additionalProperties": False,
    "default": {"flip": True, "rot90": True, "affine": 0.0, "color_jitter": 0.1, "blur": 0.0},
}


# -- augmentation ------------------------------------------------------------------------------
class Augment:
    """Random augmentation of a float image CxHxW (values 0-1) and an optional mask HxW.

    Geometric transforms (flips, rot90, affine) apply identically to image and mask (nearest
    neighbour for the mask); colour jitter and blur touch the image only. Randomness comes from
    torch's global generator, which :func:`fit` seeds, so runs repeat exactly on CPU.
    """

    def __init__(self, cfg: AugmentConfig | None = None) -> None:
        self.cfg = dict(AUGMENT_SCHEMA["default"])
        self.cfg.update(cfg or {})

    def __call__(self, image: "torch.Tensor", mask: "torch.Tensor | None" = None):
        import torch

        c = self.cfg
        r = torch.rand(8).tolist()
        if c["flip"]:
            if r[0] < 0.5:
                image, mask = image.flip(-1), None if mask is None else mask.flip(-1)
            if r[1] < 0.5:
                image, mask = image.flip(-2), None if mask is None else mask.flip(-2)
        if c["rot90"] and image.shape[-1] == image.shape[-2]:
            k = int(r[2] * 4) % 4
            if k:
                image = torch.rot90(image, k, (-2, -1))
                mask = None if mask is None else torch.rot90(mask, k, (-2, -1))
        if c["affine"] > 0 and r[3] < c["affine"]:
            image, mask = _random_affine(image, mask)
        if c["color_jitter"] > 0:
            s = c["color_jitter"]
            f = (torch.rand(3) * 2 - 1) * s + 1  # brightness, contrast, saturation factors
            image = image * f[0]
            mean = image.mean()
            image = (image - mean) * f[1] + mean
            grey = image.mean(0, keepdim=True)
            image = (image - grey) * f[2] + grey
            image = image.clamp(0, 1)
        if c["blur"] > 0 and r[4] < c["blur"]:
            image = _gaussian_blur(image, 0.5 + 0.7 * r[5])
        return image.contiguous(), None if mask is None else mask.contiguous()


def _random_affine(image: "torch.Tensor", mask: "torch.Tensor | None"):
    import torch
    import torch.nn.functional as F

    angle = (torch.rand(()) * 2 - 1) * math.radians(15)
    scale = 0.9 + 0.2 * torch.rand(())
    shift = (torch.rand(2) * 2 - 1) * 0.1  # grid units are [-1, 1]: 0.1 = 5% of the side
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, shift[0]], [sin, cos, shift[1]]], dtype=torch.float32)[None]
    grid = F.affine_grid(theta, [1, 1, *image.shape[-2:]], align_corners=False)
    # pad with the border so smear background continues instead of black corners
    image = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    if mask is not None:
        m = F.grid_sample(mask[None, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        mask = m[0, 0].to(mask.dtype)
    return image, mask


def _gaussian_blur(image: "torch.Tensor", sigma: float) -> "torch.Tensor":
    import torch
    import torch.nn.functional as F

    radius = max(1, int(round(2 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = image.shape[0]
    img = image[None]
    img = F.conv2d(F.pad(img, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    img = F.conv2d(F.pad(img, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return img[0]
