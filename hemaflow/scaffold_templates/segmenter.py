"""A hemaflow segmenter: white cells by Otsu thresholds, no training."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from hemaflow import Segmenter, hookimpl
from hemaflow.plugins.artifacts import ImageSet, MaskSet
from hemaflow.lib.imageio import write_png


def segment(img: np.ndarray, min_area: int) -> np.ndarray:
    """uint8 mask (0 background, 1 cytoplasm, 2 nucleus) of an RGB uint8 image.

    Giemsa-stained white cells are purple (blue above red) where red cells and background are
    pink or white, so cells are where blue minus red passes its Otsu threshold; the nucleus is
    the darker part of each cell (a second Otsu threshold on darkness inside the cells).
    """
    rgb = img.astype(np.float64)
    purple = rgb[..., 2] - rgb[..., 0]
    dark = 255.0 - rgb.mean(axis=2)
    mask = np.zeros(dark.shape, np.uint8)
    if purple.max() - purple.min() < 1.0:  # a flat image has no cells
        return mask
    cell = ndi.binary_fill_holes(purple > max(threshold_otsu(purple), 0.0))
    labels, n = ndi.label(cell)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    cell = (sizes[labels] >= min_area) & (labels > 0)
    mask[cell] = 1
    inside = dark[cell]
    if inside.size and inside.max() - inside.min() >= 1.0:
        mask[cell & (dark > threshold_otsu(inside))] = 2
    return mask


class TemplateComponent(Segmenter):
    """Cells where blue minus red passes its Otsu threshold; nuclei by a second Otsu on darkness.

    Input ``images: ImageSet``; output ``masks: MaskSet``, one uint8 PNG per image with 0
    background, 1 cytoplasm, 2 nucleus (all 0 for an image without cells).
    """

    name = "template_component"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "min_area": {"type": "integer", "minimum": 0, "default": 20, "description": "smallest cell in pixels"},
        },
        "additionalProperties": False,
    }

    def run(self, ctx, images: ImageSet):
        out = ctx.out_dir("masks")
        rows = []
        for _, row in ctx.progress(list(images.table.iterrows()), description="otsu"):
            write_png(out / f"{row['image_id']}.png", segment(images.read_image(row), int(self.params["min_area"])))
            rows.append({"image_id": row["image_id"], "path": f"{row['image_id']}.png"})
        return {"masks": MaskSet(out, pd.DataFrame(rows), {"source": self.name}).save()}


@hookimpl
def register_segmenters(register):
    register(TemplateComponent)
