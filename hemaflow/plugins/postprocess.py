"""Mask post-processing: the ``morphology`` postprocessor.

Input ``masks: MaskSet`` (uint8 0 background / 1 cytoplasm / 2 nucleus); output ``masks:
MaskSet`` with cleaned masks and labelled cell instances (``instances_path``: int32 ``.npy``,
0 background, 1..N cells). Steps, in order, on the cell (mask > 0):

1. fill holes, 2. opening then closing (disk radii), 3. remove objects below ``min_area``,
4. split touching cells by a distance-transform watershed: markers are the h-maxima of the
   distance transform normalised per connected component, so a split happens only where the
   neck between two cells is narrower than ``(1 - split_depth)`` times the larger cell's
   inscribed radius (irregular single cells are not cut),
5. keep instances whose area is within ``[min_area, max_area]``, 6. label instances 1..N.

The nucleus (value 2) is kept where it lies inside a kept cell; cells of a segmenter without a
nucleus class stay 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hemaflow.core.bases import Postprocessor
from hemaflow.core.chain import PerItem, Skipped
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.segment import _disk, mask_file_name, write_mask_set


def split_touching(cell: np.ndarray, *, depth: float = 0.35, min_distance: int = 3) -> np.ndarray:
    """Label ``cell`` (bool HxW) into instances, splitting touching cells by watershed.

    Args:
        cell: foreground mask.
        depth: how deep (as a fraction of a component's largest inscribed radius) the valley of
            the distance transform between two peaks must be for a split.
        min_distance: peaks closer than this (px) are merged before the watershed.

    Returns:
        int32 labels, 0 background, 1..N.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    comp, n = ndi.label(cell)
    if n == 0:
        return comp.astype(np.int32)
    dist = ndi.distance_transform_edt(cell)
    peak = ndi.maximum(dist, comp, index=np.arange(1, n + 1))
    norm = np.zeros_like(dist)
    fg = comp > 0
    norm[fg] = dist[fg] / np.asarray(peak)[comp[fg] - 1]
    # integers for h_maxima (float plateaus are fragile); 1000 levels per component
    level = np.round(norm * 1000).astype(np.int32)
    maxima = h_maxima(level, max(int(depth * 1000), 1)).astype(bool) & fg
    if min_distance > 1:
        maxima = ndi.binary_dilation(maxima, _disk(min_distance // 2)) & fg
    markers, n_markers = ndi.label(maxima)
    if n_markers <= n:  # nothing to split: keep connected components
        return comp.astype(np.int32)
    labels = watershed(-dist, markers, mask=cell)
    # components without a marker (tiny ones) keep their own label
    missing = fg & (labels == 0)
    if missing.any():
        extra, _ = ndi.label(missing)
        labels[missing] = extra[missing] + labels.max()
    return _relabel(labels)


def _relabel(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
    return lut[labels]


def clean_mask(mask: np.ndarray, *, fill_holes: bool = True, opening_radius: int = 0, closing_radius: int = 0,
               min_area: int = 0, max_area: int | None = None, split: bool = True, split_depth: float = 0.35,
               split_min_distance: int = 3, exclude_border: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Post-process one 0/1/2 mask; return (mask uint8 0/1/2, instances int32).

    Example:
        >>> m = np.zeros((40, 80), np.uint8); m[10:30, 10:30] = 1; m[10:30, 50:70] = 2
        >>> mask, inst = clean_mask(m, min_area=10)
        >>> int(inst.max()), sorted(np.unique(mask).tolist())
        (2, [0, 1, 2])
    """
    from scipy import ndimage as ndi

    cell = mask > 0
    if fill_holes:
        cell = ndi.binary_fill_holes(cell)
    if opening_radius > 0:
        cell = ndi.binary_opening(cell, _disk(opening_radius))
    if closing_radius > 0:
        r = closing_radius
        cell = ndi.binary_closing(np.pad(cell, r), _disk(r))[r:-r, r:-r]
        if fill_holes:
            cell = ndi.binary_fill_holes(cell)
    if min_area > 0:
        lab, n = ndi.label(cell)
        if n:
            areas = np.bincount(lab.ravel())
            small = areas < min_area
            small[0] = False
            cell &= ~small[lab]
    labels = split_touching(cell, depth=split_depth, min_distance=split_min_distance) if split \
        else ndi.label(cell)[0].astype(np.int32)
    if labels.max() > 0:
        areas = np.bincount(labels.ravel())
        drop = areas < min_area
        if max_area is not None:
            drop |= areas > max_area
        if exclude_border:
            border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
            drop[border] = True
        drop[0] = True
        labels[drop[labels]] = 0
        labels = _relabel(labels)
    out = np.zeros(mask.shape, np.uint8)
    out[labels > 0] = 1
    out[(labels > 0) & (mask == 2)] = 2
    return out, labels.astype(np.int32)


def clean_item(item: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Post-process one mask (``item["mask"]``: a 0/1/2 array, or the path of its canonical PNG).

    Returns ``{"image_id", "mask", "instances", "n_cells"}`` in memory, or a :class:`Skipped`
    record (``file``, ``error``) for a mask that cannot be read."""
    from hemaflow.lib import imageio as io

    mask = item["mask"]
    if not isinstance(mask, np.ndarray):
        try:
            mask = io.read_mask(mask, {"mode": "canonical"})
        except DataError as exc:
            return Skipped(image_id=item["image_id"], error=exc.problem, file=exc.path)
    out, inst = clean_mask(mask, **params)
    return {"image_id": item["image_id"], "mask": out, "instances": inst, "n_cells": int(inst.max())}


class MorphologyPostprocessor(PerItem, Postprocessor):
    """Fill holes, open/close, drop small objects, split touching cells, label instances."""

    kind = "postprocessor"
    name = "morphology"
    version = "2"
    schema = {
        "type": "object",
        "properties": {
            "fill_holes": {"type": "boolean", "default": True, "description": "fill holes inside cells"},
            "opening_radius": {"type": "integer", "minimum": 0, "maximum": 50, "default": 1,
                               "description": "disk radius (px) of an opening that removes thin spurs; 0 = off"},
            "closing_radius": {"type": "integer", "minimum": 0, "maximum": 50, "default": 2,
                               "description": "disk radius (px) of a closing that bridges small gaps; 0 = off"},
            "min_area": {"type": "integer", "minimum": 0, "default": 100,
                         "description": "objects smaller than this many pixels are removed"},
            "max_area": {"type": ["integer", "null"], "minimum": 1, "default": None,
                         "description": "instances larger than this many pixels are removed (null: no limit)"},
            "split_touching": {"type": "boolean", "default": True,
                               "description": "split touching cells with a distance-transform watershed"},
            "split_depth": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.35,
                            "description": "split only where the neck is narrower than (1 - depth) x the "
                                           "inscribed radius of the cell"},
            "split_min_distance": {"type": "integer", "minimum": 1, "default": 3,
                                   "description": "distance-transform peaks closer than this (px) are merged"},
            "exclude_border": {"type": "boolean", "default": False,
                               "description": "remove cells that touch the image border"},
            "on_error": {"enum": ["skip", "stop"], "default": "stop",
                         "description": "an unreadable mask stops the step or is left out and recorded"},
        },
        "additionalProperties": False,
    }
    inputs = {"masks": "MaskSet"}
    outputs = {"masks": "MaskSet"}

    def clean_params(self) -> dict[str, Any]:
        p = self.params
        return {"fill_holes": p["fill_holes"], "opening_radius": p["opening_radius"],
                "closing_radius": p["closing_radius"], "min_area": p["min_area"], "max_area": p["max_area"],
                "split": p["split_touching"], "split_depth": p["split_depth"],
                "split_min_distance": p["split_min_distance"], "exclude_border": p["exclude_border"]}

    # PerItem (hemaflow.core.chain): one mask per task; fuses with the steps around it
    item_input = "masks"
    item_description = "mask post-processing"

    def items(self, ctx: RunContext, masks: Any) -> list[dict[str, Any]]:
        return [{"image_id": str(row["image_id"]), "mask": str(masks.resolve(row["path"]))}
                for _, row in masks.table.reset_index(drop=True).iterrows()]

    def run_item(self, item: dict[str, Any]) -> dict[str, Any]:
        return clean_item(item, self.clean_params())

    def assemble(self, ctx: RunContext, results: list[Any], masks: Any) -> dict[str, Any]:
        from hemaflow.lib import imageio as io

        out = ctx.out_dir("masks")
        (out / "masks").mkdir(exist_ok=True)
        rows = []
        for i, res in enumerate(results):  # result i is row i of the masks (a skipped one leaves a gap)
            if isinstance(res, Skipped):
                if self.params["on_error"] == "stop":
                    raise DataError(res["file"], res["error"])
                ctx.warn(f"skipped {res['file']}: {res['error']}")
                continue
            dst = Path(mask_file_name(i))
            io.write_png(out / dst, res["mask"])
            np.save(out / dst.with_suffix(".npy"), res["instances"])
            rows.append({"image_id": res["image_id"], "path": str(dst),
                         "instances_path": str(dst.with_suffix(".npy")), "n_cells": res["n_cells"]})
        meta = dict(masks.meta, postprocess=self.name)
        meta["n_cells"] = int(sum(r["n_cells"] for r in rows))
        return {"masks": write_mask_set(ctx, "masks", rows, meta)}


@hookimpl
def register_postprocessors(register: Any) -> None:
    register(MorphologyPostprocessor)
