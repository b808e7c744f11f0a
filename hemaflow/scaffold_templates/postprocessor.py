"""A hemaflow mask post-processor: remove small objects."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from hemaflow import Postprocessor, hookimpl
from hemaflow.plugins.artifacts import MaskSet
from hemaflow.lib.imageio import write_png


class TemplateComponent(Postprocessor):
    """Drop cells (connected components of mask > 0) smaller than ``min_area`` pixels.

    Input ``masks: MaskSet``; output ``masks: MaskSet`` (uint8 0/1/2 PNGs, same images).
    """

    name = "template_component"
    version = "1"
    schema = {
        "type": "object",
        "properties": {"min_area": {"type": "integer", "minimum": 0, "default": 30}},
        "additionalProperties": False,
    }

    def run(self, ctx, masks: MaskSet):
        out = ctx.out_dir("masks")
        rows = []
        for image_id in masks.table["image_id"].astype(str):
            mask = masks.read_mask(image_id)
            labels, n = ndi.label(mask > 0)
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            mask = np.where((labels > 0) & (sizes[labels] >= int(self.params["min_area"])), mask, 0).astype(np.uint8)
            write_png(out / f"{image_id}.png", mask)
            rows.append({"image_id": image_id, "path": f"{image_id}.png"})
        return {"masks": MaskSet(out, pd.DataFrame(rows), {"source": self.name}).save()}


@hookimpl
def register_postprocessors(register):
    register(TemplateComponent)
