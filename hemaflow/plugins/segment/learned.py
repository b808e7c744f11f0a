"""Learned segmenters: DeepLabV3 / DeepLabV3+ / U-Net from segmentation-models-pytorch, trained
on the training partition's masks and selected on the validation partition, or loaded from
shipped weights by name (``weights: wbc-v1``, files in ``hemaflow/weights/``) or from a local
``.safetensors`` file written by :func:`save_weights`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.bases import Segmenter
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError, did_you_mean
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.segment.common import mask_file_name, report_overlays, write_mask_set


# -- learned segmenters: DeepLabV3 / DeepLabV3+ / U-Net -----------------------------------------
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


# -- shipped weights and the input-scale rule ---------------------------------------------------
WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
"""Package folder of the shipped segmenter weights: ``<name>.safetensors`` + ``<name>.md`` (card)."""


def shipped_weights() -> dict[str, Path]:
    """Shipped weights by name (the file stem), e.g. ``{"wbc-v1": .../hemaflow/weights/wbc-v1.safetensors}``."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def resolve_weights(weights: str) -> Path:
    """The file of a shipped weights name or of a local ``.safetensors`` path.

    Raises:
        DataError: an unknown name (the message lists the shipped names) or a missing file.
    """
    shipped = shipped_weights()
    if weights in shipped:
        return shipped[weights]
    p = Path(weights).expanduser()
    if p.suffix == ".safetensors" or "/" in weights or "\\" in weights:
        if not p.is_file():
            raise DataError(p, "weights file not found (a local path must be an existing .safetensors file "
                            f"written by hemaflow; shipped names: {', '.join(shipped) or 'none'})")
        return p
    raise DataError(weights, f"unknown segmenter weights name{did_you_mean(weights, shipped)}; shipped "
                    f"weights: {', '.join(shipped) or 'none'} (or give a local .safetensors path)")


def read_weights_meta(path: Path | str) -> dict[str, Any]:
    """The ``hemaflow`` metadata (architecture, encoder, target, scale rule...) of a weights file."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a data problem
        raise DataError(path, f"cannot read safetensors weights ({type(exc).__name__}: {exc})") from None
    if "hemaflow" not in md:
        raise DataError(path, "not a hemaflow segmenter weights file (its safetensors metadata has no "
                        "'hemaflow' entry); a file from a training run is <step>/model/model.safetensors "
                        "and is given as a model input instead")
    meta = json.loads(md["hemaflow"])
    for key in ("architecture", "encoder", "target"):
        if key not in meta:
            raise DataError(path, f"segmenter weights metadata has no {key!r}")
    return meta


def save_weights(net: Any, path: Path | str, meta: dict[str, Any], *, half: bool = True) -> Path:
    """Write ``net``'s state dict (floating tensors as fp16 when ``half``) with ``meta`` as metadata."""
    import json

    import torch
    from safetensors.torch import save_file

    state = {}
    for k, v in net.state_dict().items():
        v = v.detach().cpu()
        state[k] = (v.half() if half and v.is_floating_point() else v).contiguous()
    save_file(state, str(path), metadata={"hemaflow": json.dumps(meta, sort_keys=True)})
    del torch
    return Path(path)


def load_weights(weights: str, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Build the network of shipped weights (by name) or of a local .safetensors file.

    Returns:
        (model in eval mode, float32, on ``device``; its metadata dict).

    Example::

        net, meta = load_weights("wbc-v1")
        mask = predict_with_meta(net, rgb_uint8, meta)   # uint8 0/1/2
    """
    from safetensors.torch import load_file

    path = resolve_weights(weights)
    meta = read_weights_meta(path)
    net = build_model(meta["architecture"], meta["encoder"], 1 if meta["target"] == "cell" else 3,
                      **meta.get("model_kwargs", {}))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(path, f"weights do not fit {meta['architecture']}-{meta['encoder']} "
                        f"({str(exc).splitlines()[0]})") from None
    net.eval()
    return net.to(device), dict(meta, weights=str(weights))


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


def partition_ids(images: Any, split: Any, fold: int, rng: np.random.Generator,
                  ctx: RunContext) -> dict[str, list[str]]:
    """Image ids per partition (train/val/test) from a Split, the ImageSet's ``split`` column, or
    (last resort, with a warning) a seeded 70/15/15 split by patient."""
    t = images.table.assign(image_id=images.table["image_id"].astype(str),
                            patient_id=images.table["patient_id"].astype(str))
    parts: dict[str, list[str]] = {}
    if split is not None:
        if fold not in split.folds():
            raise DataError(split.path, f"the split has no fold {fold}; folds: {split.folds()}")
        for name in ("train", "val", "test"):
            pats = split.patients(fold, name)
            parts[name] = list(t.loc[t["patient_id"].isin(pats), "image_id"])
    elif "split" in t.columns:
        col = t["split"].astype(str).str.lower().replace({"valid": "val", "validation": "val"})
        for name in ("train", "val", "test"):
            parts[name] = list(t.loc[col == name, "image_id"])
    else:
        pats = np.array(sorted(t["patient_id"].unique()))
        rng.shuffle(pats)
        n_val = max(1, int(round(0.15 * len(pats)))) if len(pats) > 2 else 0
        n_test = max(1, int(round(0.15 * len(pats)))) if len(pats) > 3 else 0
        groups = {"val": set(pats[:n_val]), "test": set(pats[n_val:n_val + n_test]),
                  "train": set(pats[n_val + n_test:])}
        for name, g in groups.items():
            parts[name] = list(t.loc[t["patient_id"].isin(g), "image_id"])
        ctx.warn("no split input and no 'split' column: trained on a seeded 70/15/15 patient split; "
                 "connect a splitter (split: <step>) to control which images train the model")
    if not parts.get("train"):
        raise DataError(images.path, "no training images for the segmenter (empty train partition)")
    return parts


class DeepLabSegmenter(Segmenter):
    """DeepLabV3 / DeepLabV3+ / U-Net (segmentation-models-pytorch) trained on the masks of the
    training partition, model selection on the validation partition, inference on every image."""

    kind = "segmenter"
    name = "deeplabv3"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "architecture": {"enum": list(ARCHITECTURES), "default": "deeplabv3plus",
                             "description": "deeplabv3 (as in the original work; 2-5x slower on CPU), "
                                            "deeplabv3plus or unet"},
            "encoder": {"type": "string", "default": "resnet18", "minLength": 1,
                        "description": "smp encoder name (resnet18, resnet50, efficientnet-b0, "
                                       "mobilenet_v2, tu-<timm model>...)"},
            "encoder_weights": {"type": ["string", "null"], "default": None, "format": "path",
                                "description": "local file with encoder weights (.pth/.safetensors); "
                                               "null = random init. Never downloaded"},
            "target": {"enum": ["three_class", "cell"], "default": "three_class",
                       "description": "three_class: background/cytoplasm/nucleus (CE + Dice); "
                                      "cell: whole cell only (BCE + Dice)"},
            "epochs": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 20,
                       "description": "training epochs (0 = no training; needs a model input)"},
            "steps_per_epoch": {"type": ["integer", "null"], "minimum": 1, "default": None,
                                "description": "optimizer steps per epoch (null: one pass over the training images)"},
            "batch_size": {"type": "integer", "minimum": 2, "maximum": 256, "default": 8,
                           "description": "training batch size (>= 2: batch norm needs two samples)"},
            "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.001,
                   "description": "AdamW learning rate (cosine decay)"},
            "weight_decay": {"type": "number", "minimum": 0, "default": 0.0001, "description": "AdamW weight decay"},
            "input_scale": {"type": "number", "exclusiveMinimum": 0, "maximum": 4, "default": 0.5,
                            "description": "images are resized by this factor for training and inference "
                                           "(masks come back at full size)"},
            "crop_size": {"type": ["integer", "null"], "minimum": 32, "default": 256,
                          "description": "random training crop (after input_scale); null = whole images"},
            "crop_focus": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                           "description": "share of training crops placed to contain a white cell"},
            "colour_jitter": {"type": "number", "minimum": 0, "maximum": 0.5, "default": 0.1,
                              "description": "strength of the per-channel gain/contrast/brightness jitter"},
            "patience": {"type": ["integer", "null"], "minimum": 1, "default": 8,
                         "description": "stop after this many epochs without a better validation Dice"},
            "fold": {"type": "integer", "minimum": 0, "default": 0, "description": "fold of the split to train on"},
            "tile_size": {"type": "integer", "minimum": 64, "default": 1024,
                          "description": "images larger than this (after scaling) are segmented in tiles"},
            "threads": {"type": ["integer", "null"], "minimum": 1, "default": None,
                        "description": "torch CPU threads (null: torch default)"},
            # no schema default on purpose: a recipe without `weights` keeps its old cache key
            "weights": {"type": ["string", "null"], "minLength": 1, "format": "path",
                        "description": "default null (train). A shipped model name (e.g. wbc-v1, see "
                                       "hemaflow/weights/*.md) or a local .safetensors file from "
                                       "save_weights: inference only, architecture, encoder and input "
                                       "scale come from the file; the training parameters are ignored"},
        },
        "additionalProperties": False,
    }
    inputs = {"images": "ImageSet", "split": "Split?", "model": "Model?"}
    outputs = {"masks": "MaskSet", "model": "Model"}

    def input_files(self) -> dict[str, Path]:
        """The weights files in the cache key by content: ``encoder_weights``, and ``weights``
        (a shipped name stands for its file in ``hemaflow/weights/``)."""
        files = super().input_files()
        w = self.params.get("weights")
        if w and w in shipped_weights():
            files["/weights"] = shipped_weights()[w]
        return files

    def check_params(self) -> list[tuple[str, str]]:
        """An unknown shipped name or a missing weights file, before anything runs."""
        w = self.params.get("weights")
        if not w:
            return []
        try:
            resolve_weights(w)
        except DataError as exc:
            return [("/weights", str(exc))]
        return []

    def run(self, ctx: RunContext, images: Any, split: Any = None, model: Any = None) -> dict[str, Any]:
        import torch

        p = self.params
        if p["threads"]:
            torch.set_num_threads(p["threads"])
        torch.manual_seed(ctx.torch_seed("init"))
        mode = p["target"]
        n_out = 1 if mode == "cell" else 3
        out_model = ctx.out_dir("model")
        if p.get("weights"):
            if model is not None:
                raise DataError(model.path, "give either `weights` or a model input, not both")
            net, info = load_weights(p["weights"], ctx.device)
            mode = info["target"]
            ctx.log(f"loaded {p['weights']} ({info['architecture']}-{info['encoder']}, "
                    f"scale rule {info.get('scale_rule', 'fixed')}); no training")
        elif model is not None:
            net, info = self._load(model)
            mode = info["target"]
        else:
            if p["epochs"] == 0:
                raise DataError(images.path, "epochs is 0 and no model input is given: nothing to segment with")
            if not images.has_masks():
                raise DataError(images.path, "deeplabv3 trains on ground-truth masks, and this data set has "
                                "none; give it a trained model (inputs: {model: <step>.model}) or use "
                                "the 'classical' segmenter")
            net = build_model(p["architecture"], p["encoder"], n_out, p["encoder_weights"]).to(ctx.device)
            parts = partition_ids(images, split, p["fold"], ctx.rng("split"), ctx)
            info = self._train(ctx, net, images, parts, mode)
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                  str(out_model / "model.safetensors"))
        from hemaflow.core.artifacts import Model

        model_art = Model(out_model, {k: v for k, v in info.items() if k != "history"}).save()
        if info.get("history"):
            pd.DataFrame(info["history"]).to_csv(out_model / "history.csv", index=False)
        masks = self._infer(ctx, net, images, info)
        report_overlays(ctx, images, masks, f"{info['architecture']} ({info['encoder']}) masks "
                        "(green cell, blue nucleus, yellow truth)")
        return {"masks": masks, "model": model_art}

    def _load(self, model: Any):
        from safetensors.torch import load_file

        meta = model.meta
        for key in ("architecture", "encoder", "target", "input_scale"):
            if key not in meta:
                raise DataError(model.path, f"not a deeplabv3 segmenter model (meta has no {key!r})")
        net = build_model(meta["architecture"], meta["encoder"], 1 if meta["target"] == "cell" else 3,
                          **meta.get("model_kwargs", {}))
        f = model.path / "model.safetensors"
        if not f.exists():
            raise DataError(f, "model checkpoint not found")
        net.load_state_dict(load_file(str(f)))
        return net, dict(meta)

    def _train(self, ctx: RunContext, net: Any, images: Any, parts: dict[str, list[str]], mode: str) -> dict:
        import torch

        p = self.params
        scale = float(p["input_scale"])

        def load(ids):
            pairs = []
            for iid in ids:
                m = images.read_mask(iid)
                if m is None:
                    continue
                pairs.append((_rescale(images.read_image(iid), scale), _rescale(m, scale, nearest=True)))
            return pairs

        train = load(parts["train"])
        val = load(parts.get("val", []))
        if len(train) < 1:
            raise DataError(images.path, "no training image has a mask")
        ctx.log(f"training {p['architecture']}-{p['encoder']} on {len(train)} images, "
                f"validating on {len(val)} (input scale {scale})")
        rng = ctx.rng("augment")
        opt = torch.optim.AdamW(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        bs = p["batch_size"]
        steps = p["steps_per_epoch"] or max(1, int(np.ceil(len(train) / bs)))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, p["epochs"] * steps))
        crop = p["crop_size"]
        if crop is None and len({m.shape for _, m in train}) > 1:
            crop = min(min(m.shape) for _, m in train)  # batches must stack
        best = (-1.0, None, -1)
        history, bad = [], 0
        for epoch in ctx.progress(range(p["epochs"]), description="deeplabv3 training"):
            net.train()
            losses = []
            for _ in range(steps):
                idx = rng.integers(0, len(train), size=bs)
                batch = [augment_pair(train[i][0], train[i][1], rng, crop=crop, colour=p["colour_jitter"],
                                      focus=p["crop_focus"]) for i in idx]
                batch = [_pad_to_multiple(a, m, 32) for a, m in batch]
                x = torch.stack([_to_tensor(b[0]) for b in batch]).to(ctx.device)
                y = torch.from_numpy(np.stack([b[1] for b in batch])).to(ctx.device)
                loss = _loss(net(x), y, mode)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
            if val:
                d = [dice_score(predict_mask(net, im, mode=mode, device=ctx.device, tile=p["tile_size"]) > 0, m > 0)
                     for im, m in val]
                row["val_dice"] = float(np.mean(d))
                score = row["val_dice"]
            else:
                score = -row["train_loss"]
            history.append(row)
            ctx.log(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            if score > best[0]:
                best = (score, {k: v.detach().clone() for k, v in net.state_dict().items()}, epoch + 1)
                bad = 0
            else:
                bad += 1
                if p["patience"] and bad >= p["patience"]:
                    ctx.log(f"early stop after epoch {epoch + 1}")
                    break
        if best[1] is not None:
            net.load_state_dict(best[1])
        if not val:
            ctx.warn("no validation images: the model of the last-best training loss was kept")
        ctx.report.table("Segmenter training", history, section="segmentation")
        return {"architecture": p["architecture"], "encoder": p["encoder"], "target": mode,
                "input_scale": scale, "best_epoch": best[2],
                "val_dice": best[0] if val else None, "n_train": len(train), "n_val": len(val),
                "history": history}

    def _infer(self, ctx: RunContext, net: Any, images: Any, info: dict[str, Any]) -> Any:
        from hemaflow.lib import imageio as io

        out = ctx.out_dir("masks")
        (out / "masks").mkdir(exist_ok=True)
        rows = []
        table = images.table.reset_index(drop=True)
        for i, row in ctx.progress(list(table.iterrows()), description="deeplabv3 inference"):
            img = images.read_image(row)
            mask = predict_with_meta(net, img, info, device=ctx.device, tile=self.params["tile_size"])
            io.write_png(out / mask_file_name(i), mask)
            rows.append({"image_id": str(row["image_id"]), "path": mask_file_name(i)})
        return write_mask_set(ctx, "masks", rows, {"source": self.name})



@hookimpl
def register_segmenters(register: Any) -> None:
    register(DeepLabSegmenter)
