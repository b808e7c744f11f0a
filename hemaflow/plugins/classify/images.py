"""``image_classifier``: a timm model on fields, masked fields or cell crops, one model per fold.

Also the image side every image-based classifier shares (``multimodal``, ``apply_classifier``):
:func:`_image_rows` reads the fields (in ``ctx.map`` workers) or takes the crops of a CellSet,
paints the background for the masked inputs and resizes; :class:`_ImageData` serves them,
normalised for the backbone (:func:`_norm_stats`), to the training loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.lib.on_error import skip_or_stop
from hemaflow.plugins.classify.common import (
    _BACKBONE_PARAMS,
    NeuralClassifier,
    _backbone_param,
    _label_index,
    _raise_problems,
    _schema,
    _train_folds,
    check_labels,
    class_list,
)
from hemaflow.lib.training import TRAIN_SCHEMA


# -- reading images and crops ------------------------------------------------------------------------
def _load_field(item: tuple) -> dict[str, Any]:
    """Read, mask and resize one field (top level: runs in ctx.map workers)."""
    from PIL import Image

    from hemaflow.lib import imageio as io

    image_path, mask_path, mask_spec, size, paint, need_mask = item
    try:
        img = io.read_image(image_path)
        mask = None
        if mask_path is not None:
            mask = io.read_mask(mask_path, mask_spec)
            if mask.shape != img.shape[:2]:
                raise DataError(mask_path, f"mask size {mask.shape} differs from image size {img.shape[:2]}")
        elif need_mask:
            raise DataError(image_path, "no mask for this image (masked_field and mask_attention need one)")
        if paint is not None:
            img = img.copy()
            img[mask == 0] = paint
        img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
        if mask is not None:
            mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
        return {"image": img, "mask": mask}
    except DataError as exc:
        return {"error": exc.problem, "file": exc.path}


def _image_rows(ctx: RunContext, p: dict[str, Any], images: Any, cells: Any, masks: Any
                ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray | None, str, Any]:
    """Rows (id, image_id, patient_id, label), uint8 images (N,S,S,3), masks (N,S,S) or None, level, source."""
    size = int(p["image_size"])
    src = cells if p["input"] in ("cell", "masked_cell") else images
    if src is not None:
        check_labels(src.table, class_list(src), src.path)
    need_mask = p["mask_attention"] != "none" or p["input"] in ("masked_field", "masked_cell")
    paint = None
    if p["input"] in ("masked_field", "masked_cell"):
        paint = 255 if p["background"] == "white" else 0
    if p["input"] in ("cell", "masked_cell"):
        if cells is None:
            raise DataError(ctx.workdir, f"input: {p['input']} needs a `cells: CellSet` input (e.g. from cell_crops)")
        import torch
        import torch.nn.functional as F

        t = cells.table.reset_index(drop=True)
        rows = pd.DataFrame({"id": t["cell_id"].astype(str), "image_id": t["image_id"].astype(str),
                             "patient_id": t["patient_id"].astype(str), "label": t["label"]})
        ci = t["crop_index"].to_numpy(dtype=int)
        crops = np.asarray(cells.crops[ci])
        cmasks = np.asarray(cells.crop_masks[ci]) if need_mask else None
        if paint is not None:
            crops = crops.copy()
            crops[cmasks == 0] = paint
        if crops.shape[1] != size:
            x = torch.from_numpy(crops).permute(0, 3, 1, 2).float()
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            crops = x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
            if cmasks is not None:
                m = F.interpolate(torch.from_numpy(cmasks)[:, None].float(), size=(size, size), mode="nearest")
                cmasks = m[:, 0].byte().numpy()
        return rows, np.ascontiguousarray(crops), None if cmasks is None else np.ascontiguousarray(cmasks), "cell", cells
    if images is None:
        raise DataError(ctx.workdir, f"input: {p['input']} needs an `images: ImageSet` input")
    t = images.table.reset_index(drop=True)
    items = []
    for _, r in t.iterrows():
        mp, spec = None, None
        if masks is not None:
            try:
                mp, spec = str(masks.resolve(masks.row(str(r["image_id"]))["path"])), {"mode": "canonical"}
            except KeyError:
                mp = None
        else:
            v = r.get("mask_path") if "mask_path" in r.index else None
            if isinstance(v, str) and v:
                mp, spec = str(images.resolve(v)), images.meta.get("mask_spec")
        items.append((str(images.image_path(r)), mp, spec, size, paint, need_mask))
    loaded = ctx.map(_load_field, items, description="load images")
    keep, imgs, msks = [], [], []
    for i, res in enumerate(loaded):
        if "error" in res:
            skip_or_stop(ctx, p["on_error"], res["file"], res["error"])
            continue
        keep.append(i)
        imgs.append(res["image"])
        msks.append(res["mask"])
    if not keep:
        raise DataError(images.path, "no image could be read")
    t = t.iloc[keep].reset_index(drop=True)
    rows = pd.DataFrame({"id": t["image_id"].astype(str), "image_id": t["image_id"].astype(str),
                         "patient_id": t["patient_id"].astype(str), "label": t["label"]})
    mask_arr = np.stack(msks) if need_mask and all(m is not None for m in msks) else None
    return rows, np.stack(imgs), mask_arr, "image", images


class _ImageData:
    """Map-style data set over preloaded uint8 images (+ masks, + feature vectors)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray | None, y: np.ndarray, mean: Any, std: Any, *,
                 augment: dict[str, Any] | None = None, features: np.ndarray | None = None,
                 use_mask: bool = False) -> None:
        import torch

        from hemaflow.lib.training import Augment

        self.images, self.masks, self.labels = images, masks, np.asarray(y, dtype=int)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.augment = Augment(augment) if augment is not None else None
        self.features = features
        self.use_mask = use_mask

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        img = torch.from_numpy(np.asarray(self.images[i])).permute(2, 0, 1).float().div(255)
        mask = torch.from_numpy(np.asarray(self.masks[i])) if self.masks is not None else None
        if self.augment is not None:
            img, mask = self.augment(img, mask)
        item: dict[str, Any] = {"image": (img - self.mean) / self.std, "y": int(self.labels[i])}
        if self.use_mask and mask is not None:
            item["mask"] = mask
        if self.features is not None:
            item["features"] = torch.from_numpy(self.features[i])
        return item


def _forward_image(model: Any, batch: dict[str, Any]) -> Any:
    return model(batch["image"], batch.get("mask"))


def _norm_stats(name: str) -> tuple[list[float], list[float]]:
    """The input normalisation timm's default config gives for model ``name``."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    mean = getattr(cfg, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(cfg, "std", None) or (0.229, 0.224, 0.225)
    return [float(v) for v in mean], [float(v) for v in std]


# -- the component ------------------------------------------------------------------------------------
class ImageClassifier(NeuralClassifier):
    """A timm classifier on fields, masked fields or cell crops, one model per fold.

    Inputs: ``split`` and ``images`` (input field/masked_field; masks from ``masks`` or the
    images' ground truth) or ``cells`` (input cell). Image-level (or cell-level) predictions.
    """

    name = "image_classifier"
    version = "1"
    schema = _schema({
        "backbone": _backbone_param("resnet50", "any timm model name (resnet50, densenet121, vit_small_patch16_224, "
                                                "convnext_tiny...; test_resnet/test_vit for tiny runs)"),
        **_BACKBONE_PARAMS,
        "drop_rate": {"type": "number", "minimum": 0, "maximum": 0.9, "default": 0.0,
                      "description": "dropout before the classifier head"},
        **TRAIN_SCHEMA,
    })
    inputs = {"split": "Split", "images": "ImageSet?", "cells": "CellSet?", "masks": "MaskSet?"}

    def run(self, ctx: RunContext, split: Any, images: Any = None, cells: Any = None, masks: Any = None) -> dict[str, Any]:
        from hemaflow.lib.nets import ImageNet

        p = self.params
        _raise_problems(self.check_params())
        rows, imgs, msks, level, source = _image_rows(ctx, p, images, cells, masks)
        classes = class_list(source)
        rows = rows.assign(_row=np.arange(len(rows)))
        rows = _label_index(ctx, rows, classes, source.path, level)
        imgs = imgs[rows["_row"].to_numpy()]
        msks = msks[rows["_row"].to_numpy()] if msks is not None else None
        use_mask = p["mask_attention"] != "none"
        if use_mask and msks is None:
            raise DataError(source.path, f"mask_attention {p['mask_attention']!r} needs masks: give a `masks` input "
                                         "or images with ground-truth masks")

        def build() -> Any:
            return ImageNet(p["backbone"], len(classes), pretrained=p["pretrained"], img_size=p["image_size"],
                            mask_attention=p["mask_attention"], drop_rate=p["drop_rate"])

        mean, std = _norm_stats(p["backbone"])
        y = rows["y"].to_numpy()

        def make_data(idx: np.ndarray, train: bool, state: Any) -> Any:
            return _ImageData(imgs[idx], None if msks is None else msks[idx], y[idx], mean, std,
                              augment=p["augment"] if train else None, use_mask=use_mask)

        return _train_folds(ctx, self, split=split, rows=rows, classes=classes, level=level, build=build,
                            make_data=make_data, forward=_forward_image, source=source,
                            extra_meta={"backbone": p["backbone"], "input": p["input"], "image_size": p["image_size"],
                                        "mean": mean, "std": std})


@hookimpl
def register_classifiers(register: Any) -> None:
    register(ImageClassifier)
