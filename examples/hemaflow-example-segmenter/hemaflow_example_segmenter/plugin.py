"""The ``otsu_watershed`` segmenter, registered as a hemaflow plugin.

White cells stain blue-violet and red cells red, so the blue-minus-red contrast ``(B - R)``
separates them from background and erythrocytes. Otsu's threshold on its upper half (red
cells < background < white cells) gives the white cells, a second Otsu inside them the nuclei;
a watershed on the distance transform, seeded with one marker per nucleus, splits touching
cells into instances (written as ``instances_path``, which ``cell_crops`` and the
``segmentation`` evaluator use).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hemaflow import Segmenter, hookimpl
from hemaflow.plugins.artifacts import MaskSet
from hemaflow.lib.imageio import write_png


def _drop_small(binary: np.ndarray, min_size: int) -> np.ndarray:
    from scipy import ndimage as ndi

    labels, n = ndi.label(binary)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def segment(rgb: np.ndarray, *, sigma: float = 1.0, min_cell_area: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """(mask uint8 HxW: 0 background, 1 cytoplasm, 2 nucleus; instances int32 HxW) of one RGB image."""
    from scipy import ndimage as ndi
    from skimage import filters, measure, segmentation

    img = rgb.astype(np.float64)
    contrast = img[..., 2] - img[..., 0]  # white cells blue-violet, red cells red, background pale pink
    if sigma:
        contrast = filters.gaussian(contrast, sigma=sigma)
    empty = np.zeros(rgb.shape[:2], np.uint8), np.zeros(rgb.shape[:2], np.int32)
    if np.ptp(contrast) < 1e-6:  # a flat image: nothing to find
        return empty
    # red cells < background < white cells: red cells fill most of the lower half, so Otsu on the
    # upper half separates white cells from the background
    upper = contrast[contrast > np.median(contrast)]
    cell = contrast > filters.threshold_otsu(upper)
    cell = _drop_small(ndi.binary_fill_holes(cell), min_cell_area)
    inside = contrast[cell]
    if inside.size == 0 or np.ptp(inside) < 1e-6:
        return empty
    nucleus = cell & (contrast > filters.threshold_otsu(inside))
    nucleus = _drop_small(ndi.binary_opening(nucleus), max(1, min_cell_area // 8))
    markers = measure.label(nucleus)
    instances = segmentation.watershed(-ndi.distance_transform_edt(cell), markers, mask=cell).astype(np.int32)
    mask = np.where(instances > 0, 1, 0).astype(np.uint8)  # a cell without a nucleus is dropped
    mask[nucleus & (instances > 0)] = 2
    return mask, instances


class OtsuWatershed(Segmenter):
    """Otsu thresholds on the blue-red contrast, touching cells split by a watershed."""

    name = "otsu_watershed"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "sigma": {"type": "number", "minimum": 0, "maximum": 10, "default": 1.0,
                      "description": "Gaussian smoothing (px) of the contrast before thresholding (0: none)"},
            "min_cell_area": {"type": "integer", "minimum": 1, "default": 80,
                              "description": "white cells smaller than this (px) are dropped; nuclei below 1/8 of it"},
        },
        "additionalProperties": False,
    }

    def run(self, ctx, images):
        out = ctx.out_dir("masks")
        (out / "masks").mkdir(exist_ok=True)
        rows, empty = [], 0
        for i, row in enumerate(ctx.progress(list(images.table.to_dict("records")), description="otsu watershed")):
            mask, instances = segment(images.read_image(row), sigma=float(self.params["sigma"]),
                                      min_cell_area=int(self.params["min_cell_area"]))
            write_png(out / f"masks/{i:06d}.png", mask)
            np.save(out / f"masks/{i:06d}_instances.npy", instances)
            empty += int(not mask.any())
            rows.append({"image_id": row["image_id"], "path": f"masks/{i:06d}.png",
                         "instances_path": f"masks/{i:06d}_instances.npy", "n_cells": int(instances.max())})
        if empty:
            ctx.warn(f"no white cell found in {empty} of {len(rows)} images")
        table = pd.DataFrame(rows, columns=["image_id", "path", "instances_path", "n_cells"])
        return {"masks": MaskSet(out, table, {"source": self.name, "empty_images": empty}).save()}


@hookimpl
def register_segmenters(register):
    register(OtsuWatershed)
