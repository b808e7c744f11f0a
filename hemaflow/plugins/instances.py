"""Instances for MIL other than segmented cells: whole images and grid patches.

Both are ``cells`` components and output a :class:`~hemaflow.plugins.artifacts.CellSet` exactly
like ``cell_crops`` (cell table + ``crops.npy`` uint8 (N,S,S,3) + ``crop_masks.npy`` uint8
(N,S,S) with 0/1/2), so every downstream step (radiomics, instance encoder, MIL) takes them.

* ``whole_images``: one instance per image, for data sets that already hold one cell per image
  (the per-cell exports of digital morphology analysers such as CellaVision). The image is
  padded to a square (edge colour) and resized to ``crop_size``.
* ``patches``: the original code's "patchify": a grid of ``size`` x ``size`` patches with
  ``stride`` over each field, kept where the mask (predicted ``masks`` input, else the data set's
  own masks) covers at least ``min_coverage`` of the patch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.bases import CellExtractor
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.lib.imageio import resize as _resize
from hemaflow.lib.on_error import skip_or_stop

CELL_COLUMNS = ["cell_id", "image_id", "patient_id", "label", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1",
                "centroid_y", "centroid_x", "area", "crop_index"]


def _pad_square(arr: np.ndarray) -> tuple[np.ndarray, int, int]:
    h, w = arr.shape[:2]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    pad = [(top, s - h - top), (left, s - w - left)] + [(0, 0)] * (arr.ndim - 2)
    return np.pad(arr, pad, mode="edge" if arr.ndim == 3 else "constant"), top, left


def _whole_image_item(args: tuple) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | tuple[str, str]:
    path, mask_path, mask_spec, crop_size, image_id = args
    from hemaflow.lib import imageio as io

    try:
        img = io.read_image(path)
        mask = io.read_mask(mask_path, mask_spec) if mask_path else None
    except DataError as exc:
        return ("error", str(exc))
    h, w = img.shape[:2]
    if mask is None:
        mask = np.ones((h, w), np.uint8)
    elif mask.shape != (h, w):
        return ("error", f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, image {image_id} is {w}x{h}")
    sq, _, _ = _pad_square(img)
    msq, _, _ = _pad_square(mask)
    ys, xs = np.nonzero(mask)
    info = {"bbox_y0": 0, "bbox_x0": 0, "bbox_y1": h, "bbox_x1": w,
            "centroid_y": float(ys.mean()) if len(ys) else h / 2, "centroid_x": float(xs.mean()) if len(xs) else w / 2,
            "area": int((mask > 0).sum())}
    return _resize(sq, crop_size, False), _resize(msq, crop_size, True), info


def _patch_item(args: tuple) -> tuple[list[np.ndarray], list[np.ndarray], list[dict[str, Any]]] | tuple[str, str]:
    path, mask, size, stride, min_cov, crop_size = args
    from hemaflow.lib import imageio as io

    try:
        img = io.read_image(path)
    except DataError as exc:
        return ("error", str(exc))
    h, w = img.shape[:2]
    if mask.shape != (h, w):
        return ("error", f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, image is {w}x{h}")
    cov = (mask > 0).astype(np.float64)
    # integral image: coverage of every grid patch in O(1)
    ii = np.pad(cov.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    crops, masks, infos = [], [], []
    ys = list(range(0, max(h - size, 0) + 1, stride)) if h >= size else []
    xs = list(range(0, max(w - size, 0) + 1, stride)) if w >= size else []
    for y0 in ys:
        for x0 in xs:
            y1, x1 = y0 + size, x0 + size
            c = (ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]) / (size * size)
            if c + 1e-9 < min_cov or c == 0:
                continue
            crops.append(_resize(img[y0:y1, x0:x1], crop_size, False))
            masks.append(_resize(mask[y0:y1, x0:x1], crop_size, True))
            infos.append({"bbox_y0": y0, "bbox_x0": x0, "bbox_y1": y1, "bbox_x1": x1,
                          "centroid_y": y0 + size / 2, "centroid_x": x0 + size / 2,
                          "area": int(round(c * size * size)), "coverage": float(c)})
    return crops, masks, infos


def _save_cellset(ctx: RunContext, rows: list[dict], crops: list[np.ndarray], masks: list[np.ndarray],
                  crop_size: int, images, source: str, skipped: list[dict] | None = None):
    from hemaflow.plugins.artifacts import CellSet

    out = ctx.out_dir("cells")
    n = len(crops)
    np.save(out / "crops.npy", np.stack(crops).astype(np.uint8) if n else np.zeros((0, crop_size, crop_size, 3), np.uint8))
    np.save(out / "crop_masks.npy", np.stack(masks).astype(np.uint8) if n else np.zeros((0, crop_size, crop_size), np.uint8))
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=CELL_COLUMNS)
    meta = {"crop_size": crop_size, "classes": images.classes, "source": source,
            "patients_are_images": bool(images.meta.get("patients_are_images", False))}
    if skipped is not None:  # images this step left out (on_error: skip), recorded like the data step's
        meta["skipped"] = skipped
        pd.DataFrame(skipped, columns=["file", "reason", "step"]).to_parquet(out / "skipped.parquet", index=False)
        if skipped:
            ctx.report.table(f"Skipped images ({len(skipped)}, step {ctx.step_id})", skipped[:200], section="data")
    return CellSet(out, table, meta).save()


def _truth_for(images, table: pd.DataFrame) -> pd.Series | None:
    """Generator truth for instances: ``abnormal`` if an abnormal cell's centroid lies inside."""
    try:
        truth = images.cell_truth()
    except Exception:  # noqa: BLE001 - truth is optional garnish
        truth = None
    if truth is None or table.empty or "truth" not in truth.columns:
        return None
    truth = truth.copy()
    truth["image_id"] = truth["image_id"].astype(str)
    by_img = dict(tuple(truth.groupby("image_id")))
    out = []
    for _, r in table.iterrows():
        t = by_img.get(str(r["image_id"]))
        if t is None:
            out.append(None)
            continue
        inside = t[(t["centroid_y"] >= r["bbox_y0"]) & (t["centroid_y"] < r["bbox_y1"])
                   & (t["centroid_x"] >= r["bbox_x0"]) & (t["centroid_x"] < r["bbox_x1"])]
        if inside.empty:
            out.append("none")
        else:
            vals = set(inside["truth"].astype(str).str.lower())
            out.append("abnormal" if vals - {"normal"} else "normal")
    return pd.Series(out, index=table.index)


class WholeImages(CellExtractor):
    """One instance per image (single-cell exports): the image padded square and resized."""

    kind = "cells"
    name = "whole_images"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "crop_size": {"type": "integer", "minimum": 8, "maximum": 1024, "default": 96,
                          "description": "side of the square crop in pixels (the image is padded square first)"},
            "on_error": {"enum": ["skip", "stop"], "default": "skip",
                         "description": "an unreadable image or mask: skip it (recorded as a warning) or stop"},
        },
        "additionalProperties": False,
    }
    inputs = {"images": "ImageSet", "masks": "MaskSet?"}
    outputs = {"cells": "CellSet"}

    def run(self, ctx: RunContext, images, masks=None) -> dict[str, Any]:
        size = int(self.params["crop_size"])
        t = images.table.reset_index(drop=True)
        items = []
        for _, r in t.iterrows():
            mpath, spec = None, None
            if masks is not None and str(r["image_id"]) in masks._index():
                mpath, spec = str(masks.resolve(masks.row(str(r["image_id"]))["path"])), {"mode": "canonical"}
            elif "mask_path" in t.columns and isinstance(r.get("mask_path"), str) and r["mask_path"]:
                mpath, spec = str(images.resolve(r["mask_path"])), images.meta.get("mask_spec")
            items.append((str(images.image_path(r)), mpath, spec, size, str(r["image_id"])))
        results = ctx.map(_whole_image_item, items, description="whole images")
        rows, crops, cmasks, skipped = [], [], [], []
        for (_, r), res in zip(t.iterrows(), results):
            if isinstance(res[0], str):
                skip_or_stop(ctx, self.params["on_error"], images.image_path(r), res[1], item=f"image {r['image_id']}")
                file = str(images.image_path(r))
                skipped.append({"file": file, "reason": res[1].removeprefix(f"{file}: "), "step": ctx.step_id})
                continue
            crop, m, info = res
            rows.append({"cell_id": f"{r['image_id']}:0", "image_id": str(r["image_id"]),
                         "patient_id": str(r["patient_id"]), "label": r["label"], **info, "crop_index": len(crops)})
            crops.append(crop)
            cmasks.append(m)
        return {"cells": _save_cellset(ctx, rows, crops, cmasks, size, images, self.name, skipped)}


class Patches(CellExtractor):
    """A grid of patches over each field, kept where the mask covers enough ("patchify")."""

    kind = "cells"
    name = "patches"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "size": {"type": "integer", "minimum": 4, "maximum": 4096, "default": 64,
                     "description": "patch side in pixels of the field"},
            "stride": {"type": "integer", "minimum": 1, "maximum": 4096, "default": 32,
                       "description": "grid step in pixels (stride < size overlaps)"},
            "min_coverage": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2,
                             "description": "keep a patch when at least this fraction of it is cell (mask > 0); "
                                            "patches with no cell pixel are always dropped"},
            "crop_size": {"type": ["integer", "null"], "minimum": 8, "maximum": 1024, "default": None,
                          "description": "resize kept patches to this side (null: keep `size`)"},
            "max_per_image": {"type": "integer", "minimum": 0, "default": 0,
                              "description": "keep at most this many patches per image, the best-covered "
                                             "first (0: no limit)"},
            "on_error": {"enum": ["skip", "stop"], "default": "skip",
                         "description": "an unreadable image or a missing mask: skip it (warned) or stop"},
        },
        "additionalProperties": False,
    }
    inputs = {"images": "ImageSet", "masks": "MaskSet?"}
    outputs = {"cells": "CellSet"}

    def run(self, ctx: RunContext, images, masks=None) -> dict[str, Any]:
        p = self.params
        size, stride = int(p["size"]), int(p["stride"])
        crop_size = int(p["crop_size"] or size)
        t = images.table.reset_index(drop=True)
        items, keep = [], []
        for _, r in t.iterrows():
            iid = str(r["image_id"])
            try:
                if masks is not None:
                    if iid not in masks._index():
                        raise DataError(images.image_path(r), "no predicted mask for this image")
                    m = masks.read_mask(iid)
                else:
                    m = images.read_mask(r)
                    if m is None:
                        raise DataError(images.image_path(r), "no mask: give the step a `masks` input "
                                                              "(a segmenter) or use a data set with masks")
            except DataError as exc:
                skip_or_stop(ctx, p["on_error"], images.image_path(r), str(exc), item=f"image {iid}", error=exc)
                continue
            items.append((str(images.image_path(r)), m, size, stride, float(p["min_coverage"]), crop_size))
            keep.append(r)
        results = ctx.map(_patch_item, items, description="patches")
        rows, crops, cmasks = [], [], []
        for r, res in zip(keep, results):
            if len(res) == 2 and isinstance(res[0], str):
                skip_or_stop(ctx, p["on_error"], images.image_path(r), res[1], item=f"image {r['image_id']}")
                continue
            pc, pm, infos = res
            order = list(range(len(pc)))
            if p["max_per_image"] and len(order) > p["max_per_image"]:
                order = sorted(order, key=lambda i: -infos[i]["coverage"])[: p["max_per_image"]]
                order.sort()
            for k, i in enumerate(order):
                info = dict(infos[i])
                info.pop("coverage")
                rows.append({"cell_id": f"{r['image_id']}:{k}", "image_id": str(r["image_id"]),
                             "patient_id": str(r["patient_id"]), "label": r["label"], **info,
                             "crop_index": len(crops)})
                crops.append(pc[i])
                cmasks.append(pm[i])
        if not rows:
            ctx.warn("no patch reached min_coverage in any image")
        cells = _save_cellset(ctx, rows, crops, cmasks, crop_size, images, self.name)
        truth = _truth_for(images, cells.table)
        if truth is not None:
            cells.table["truth"] = truth
            cells.save()
        return {"cells": cells}


COMPONENTS = (WholeImages, Patches)


@hookimpl
def register_cell_extractors(register: Any) -> None:
    for cls in COMPONENTS:
        register(cls)
