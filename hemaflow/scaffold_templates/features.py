"""A hemaflow feature extractor: colour statistics and area of each cell."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hemaflow import FeatureExtractor, hookimpl
from hemaflow.plugins.artifacts import CellSet, FeatureTable

FEATURES = ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "area_px"]


class TemplateComponent(FeatureExtractor):
    """Mean and standard deviation of R, G, B inside the cell's crop mask, and its area.

    Input ``cells: CellSet``; output ``features: FeatureTable`` (one row per cell with its ids).
    A crop whose mask is empty is measured over the whole crop.
    """

    name = "template_component"
    version = "1"
    schema = {"type": "object", "properties": {}, "additionalProperties": False}

    def run(self, ctx, cells: CellSet):
        crops, masks = cells.crops, cells.crop_masks
        values = []
        for k in cells.table["crop_index"].astype(int):
            inside = masks[k] > 0
            px = crops[k][inside] if inside.any() else crops[k].reshape(-1, 3)
            px = px.astype(np.float64)
            values.append([*px.mean(axis=0), *px.std(axis=0), float(inside.sum())])
        ids = cells.table[["cell_id", "image_id", "patient_id", "label"]].reset_index(drop=True)
        table = pd.concat([ids, pd.DataFrame(np.array(values).reshape(-1, len(FEATURES)), columns=FEATURES)], axis=1)
        meta = {"feature_columns": FEATURES, "classes": cells.classes, "source": self.name}
        return {"features": FeatureTable(ctx.out_dir("features"), table, meta).save()}


@hookimpl
def register_feature_extractors(register):
    register(TemplateComponent)
