"""The networks of the learned segmenter (``deeplabv3`` in :mod:`hemaflow.plugins.segment.learned`):
building a DeepLabV3 / DeepLabV3+ / U-Net from segmentation-models-pytorch (encoder weights from a
local file only), the paired image/mask augmentation, the training loss, prediction of one image
(resized, padded, tiled when large) and the ``cell_size`` input-scale rule, and the Dice score.

Pure functions on numpy arrays and torch modules; nothing here is a component."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hemaflow.core.errors import DataError


IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
ARCHITECTURES = {"deeplabv3": "DeepLabV3", "deeplabv3plus": "DeepLabV3Plus", "unet": "Unet"}


def build_model(architecture: str, encoder: str, n_out: int, encoder_weights: str | None = None,
                **model_kwargs: Any):
    """Build an smp model with random weights; load encoder weights from a local file only.

    ``model_kwargs`` go to the smp class (e.g. ``decoder_channels``, ``encoder_depth``).

    Raises:
        DataError: the weights file is missing or matches none of the encoder's parameters.
    """
    import segmentation_models_pytorch as smp

    cls = getattr(smp, ARCHITECTURES[architecture])
    try:
        model = cls(encoder_name=encoder, encoder_weights=None, classes=n_out, **model_kwargs)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise DataError(encoder, f"segmentation-models-pytorch cannot build encoder {encoder!r} "
                        f"({exc}); use e.g. resnet18, resnet50, efficientnet-b0, mobilenet_v2 or "
                        f"tu-<timm model>") from None
    if encoder_weights:
        load_encoder_weights(model, encoder_weights)
    return model


def load_encoder_weights(model: Any, path: str) -> None:
    """Load a local state dict (.pth/.pt/.safetensors) into ``model.encoder``."""
    import torch

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(p, "encoder weights file not found. hemaflow never downloads weights: download "
                        "the encoder's ImageNet weights once (e.g. from the timm or torchvision release "
                        "page), then set encoder_weights to the local file path")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a data problem
        raise DataError(p, f"cannot read encoder weights ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.encoder.state_dict()
    for prefix in ("", "encoder.", "model.", "module."):
        cand = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        match = {k: v for k, v in cand.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
        if match:
            break
    if not match:
        raise DataError(p, f"no parameter of the file matches the encoder ({len(own)} parameters, e.g. "
                        f"{next(iter(own))!r}); is it the weights of the same encoder?")
    model.encoder.load_state_dict(match, strict=False)


def _to_tensor(img: np.ndarray):
    import torch

    x = (img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def _rescale(img: np.ndarray, scale: float, nearest: bool = False) -> np.ndarray:
    if scale == 1.0:
        return img
    from PIL import Image

    h, w = img.shape[:2]
    size = (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1))
    return np.asarray(Image.fromarray(img).resize(size, Image.NEAREST if nearest else Image.BILINEAR))


def augment_pair(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator, *, crop: int | None = None,
                 colour: float = 0.1, focus: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Random crop, flips and rot90 applied to image and mask together; colour jitter on the image.

    With probability ``focus`` the crop is placed so that it contains a random foreground pixel
    (white cells are a small part of a field). Rot90 is used only where the result keeps the
    shape (square inputs), so batches stack.
    """
    if crop is not None:
        h, w = mask.shape
        ph, pw = max(crop - h, 0), max(crop - w, 0)
        if ph or pw:
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
            mask = np.pad(mask, ((0, ph), (0, pw)), mode="reflect")
        h, w = mask.shape
        fg = np.flatnonzero(mask) if focus > 0 and rng.random() < focus else np.empty(0, int)
        if len(fg):
            cy, cx = divmod(int(fg[rng.integers(0, len(fg))]), w)
            y = int(np.clip(cy - rng.integers(0, crop), 0, h - crop))
            x = int(np.clip(cx - rng.integers(0, crop), 0, w - crop))
        else:
            y, x = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        img, mask = img[y:y + crop, x:x + crop], mask[y:y + crop, x:x + crop]
    if rng.random() < 0.5:
        img, mask = img[:, ::-1], mask[:, ::-1]
    if rng.random() < 0.5:
        img, mask = img[::-1], mask[::-1]
    if mask.shape[0] == mask.shape[1]:
        k = int(rng.integers(0, 4))
        img, mask = np.rot90(img, k), np.rot90(mask, k)
    if colour > 0:
        f = img.astype(np.float32)
        gain = 1 + rng.uniform(-colour, colour, size=3).astype(np.float32)   # per channel
        contrast = 1 + rng.uniform(-colour, colour)
        mean = f.mean(axis=(0, 1), keepdims=True)
        f = (f - mean) * contrast + mean * gain + rng.uniform(-colour, colour) * 255 * 0.5
        img = np.clip(f, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img), np.ascontiguousarray(mask)


def _pad_to_multiple(img: np.ndarray, mask: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """Reflect-pad image and mask (bottom/right) to a multiple of the network's output stride."""
    ph, pw = (-mask.shape[0]) % multiple, (-mask.shape[1]) % multiple
    if not (ph or pw):
        return img, mask
    mode = "reflect" if ph < mask.shape[0] and pw < mask.shape[1] else "edge"
    return (np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode), np.pad(mask, ((0, ph), (0, pw)), mode=mode))


def _loss(logits, target, mode: str):
    import torch
    import torch.nn.functional as F

    if mode == "cell":
        y = (target > 0).float()
        p = torch.sigmoid(logits[:, 0])
        bce = F.binary_cross_entropy_with_logits(logits[:, 0], y)
        dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
        return bce + dice
    ce = F.cross_entropy(logits, target.long())
    prob = torch.softmax(logits, dim=1)
    pc, yc = prob[:, 1] + prob[:, 2], (target > 0).float()
    pn, yn = prob[:, 2], (target == 2).float()
    dice_c = 1 - (2 * (pc * yc).sum() + 1) / (pc.sum() + yc.sum() + 1)
    dice_n = 1 - (2 * (pn * yn).sum() + 1) / (pn.sum() + yn.sum() + 1)
    return ce + dice_c + 0.5 * dice_n


def predict_mask(model: Any, img: np.ndarray, *, mode: str, scale: float = 1.0, multiple: int = 32,
                 tile: int = 1024, device: str = "cpu") -> np.ndarray:
    """Segment one RGB image of any size; return uint8 0/1/2 at the image's own size.

    The image is resized by ``scale``, reflect-padded to a multiple of ``multiple`` (the
    network's output stride); images larger than ``tile`` are processed in overlapping tiles.
    Logits are upsampled to the original size before the argmax.
    """
    import torch
    import torch.nn.functional as F

    H, W = img.shape[:2]
    small = _rescale(img, scale)
    h, w = small.shape[:2]
    x = _to_tensor(small)[None]
    ph, pw = (-h) % multiple, (-w) % multiple
    mode_pad = "reflect" if ph < h and pw < w else "replicate"
    x = F.pad(x, (0, pw, 0, ph), mode=mode_pad)
    model.eval()
    with torch.no_grad():
        if x.shape[2] <= tile and x.shape[3] <= tile:
            logits = model(x.to(device)).float().cpu()
        else:
            logits = _tiled(model, x, tile, multiple, device)
    logits = logits[:, :, :h, :w]
    if (h, w) != (H, W):
        logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
    out = np.zeros((H, W), np.uint8)
    if mode == "cell":
        out[(logits[0, 0] > 0).numpy()] = 1
    else:
        out[:] = logits[0].argmax(0).numpy().astype(np.uint8)
    return out


def _tiled(model: Any, x: Any, tile: int, multiple: int, device: str):
    import torch

    _, _, H, W = x.shape
    tile = max(multiple, tile - tile % multiple)
    step = max(multiple, (tile * 3 // 4) // multiple * multiple)
    acc = None
    cnt = torch.zeros(1, 1, H, W)

    def starts(n):
        s = list(range(0, max(n - tile, 0) + 1, step))
        if s[-1] + tile < n:
            s.append(n - tile)
        return s

    for y in starts(H):
        for x0 in starts(W):
            part = x[:, :, y:y + tile, x0:x0 + tile]
            out = model(part.to(device)).float().cpu()
            if acc is None:
                acc = torch.zeros(1, out.shape[1], H, W)
            acc[:, :, y:y + part.shape[2], x0:x0 + part.shape[3]] += out
            cnt[:, :, y:y + part.shape[2], x0:x0 + part.shape[3]] += 1
    return acc / cnt



def largest_cell_diameter(mask: np.ndarray) -> float | None:
    """Equivalent diameter (px) of the largest connected white cell of a 0/1/2 mask, None if none."""
    from scipy import ndimage

    lab, n = ndimage.label(mask > 0)
    if n == 0:
        return None
    area = float(np.bincount(lab.ravel())[1:].max())
    return float(np.sqrt(4 * area / np.pi))


def predict_cell_size(model: Any, img: np.ndarray, *, mode: str, cell_diameter: float,
                      first_short_side: int, tolerance: float = 1.25, min_scale: float = 0.05,
                      max_scale: float = 8.0, device: str = "cpu", tile: int = 1024) -> np.ndarray:
    """Segment at the scale where the white cell is ``cell_diameter`` px wide (the training size).

    One rule for every image, field or single-cell crop: a first pass with the short side resized
    to ``first_short_side`` px finds the largest white cell; when its size at that scale is off
    by more than ``tolerance`` (a factor), a second pass runs at ``cell_diameter / diameter``.
    No pixel size or source-specific setting is needed.
    """
    s1 = float(np.clip(first_short_side / min(img.shape[:2]), min_scale, max_scale))
    m1 = predict_mask(model, img, mode=mode, scale=s1, device=device, tile=tile)
    d = largest_cell_diameter(m1)
    if d is None or d * s1 < 8:  # nothing cell-sized at the first scale
        return m1
    # at most 3x away from the first scale: a wrong first pass cannot blow the input up
    s2 = float(np.clip(cell_diameter / d, max(min_scale, s1 / 3), min(max_scale, s1 * 3)))
    if max(s2 / s1, s1 / s2) <= tolerance:
        return m1
    return predict_mask(model, img, mode=mode, scale=s2, device=device, tile=tile)


def predict_with_meta(model: Any, img: np.ndarray, meta: dict[str, Any], *, device: str = "cpu",
                      tile: int = 1024) -> np.ndarray:
    """Segment one RGB uint8 image with the input-scale rule stored in the weights' metadata."""
    if meta.get("scale_rule") == "cell_size":
        return predict_cell_size(model, img, mode=meta["target"], cell_diameter=meta["cell_diameter"],
                                 first_short_side=meta["first_short_side"],
                                 tolerance=meta.get("scale_tolerance", 1.25), device=device, tile=tile)
    return predict_mask(model, img, mode=meta["target"], scale=float(meta.get("input_scale", 1.0)),
                        device=device, tile=tile)


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    p, t = pred.astype(bool), truth.astype(bool)
    s = int(p.sum()) + int(t.sum())
    return 1.0 if s == 0 else 2.0 * int((p & t).sum()) / s
