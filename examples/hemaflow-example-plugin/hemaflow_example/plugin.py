"""Grey-world normalization and per-cell colour statistics, registered as a hemaflow plugin."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hemaflow import hookimpl
from hemaflow.core.component import Component
from hemaflow.plugins.artifacts import CellSet, FeatureTable, ImageSet
from hemaflow.lib.imageio import write_png


class GreyWorld(Component):
    """Grey-world colour constancy: equalize the channel means of each image."""

    kind = "normalizer"
    name = "grey_world"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "strength": {"type": "number", "minimum": 0, "maximum": 1, "default": 1.0,
                         "description": "0 keeps the image, 1 applies full grey-world correction"},
        },
        "additionalProperties": False,
    }
    inputs = {"images": "ImageSet"}
    outputs = {"images": "ImageSet"}

    def run(self, ctx, images: ImageSet):
        out_dir = ctx.out_dir("images")
        (out_dir / "files").mkdir(exist_ok=True)
        rows = []
        strength = float(self.params["strength"])
        for _, row in ctx.progress(list(images.table.iterrows()), description="grey world"):
            img = images.read_image(row).astype(np.float64)
            means = img.reshape(-1, 3).mean(axis=0)
            gain = means.mean() / np.maximum(means, 1e-6)
            gain = 1.0 + strength * (gain - 1.0)
            out = np.clip(np.round(img * gain), 0, 255).astype(np.uint8)
            rel = f"files/{row['image_id']}.png"
            write_png(out_dir / rel, out)
            rows.append(dict(row.to_dict(), path=rel))
        # derive() keeps classes, mask spec and cell truth, pointing at the original files
        return {"images": images.derive(out_dir, pd.DataFrame(rows)).save()}


class ColourStats(Component):
    """Per-cell colour statistics inside the cell mask."""

    kind = "features"
    name = "colour_stats"
    version = "1"
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    inputs = {"cells": "CellSet"}
    outputs = {"features": "FeatureTable"}

    def run(self, ctx, cells: CellSet):
        crops, masks = cells.crops, cells.crop_masks
        feats = []
        for i in range(len(cells.table)):
            k = int(cells.table["crop_index"].iloc[i])
            m = masks[k] > 0
            px = crops[k][m].astype(np.float64) if m.any() else np.zeros((1, 3))
            nuc = float((masks[k] == 2).sum()) / max(int(m.sum()), 1)
            feats.append([*px.mean(axis=0), *px.std(axis=0), nuc])
        cols = ["colour_mean_r", "colour_mean_g", "colour_mean_b", "colour_std_r", "colour_std_g", "colour_std_b",
                "colour_nucleus_fraction"]
        ids = [c for c in ("cell_id", "image_id", "patient_id", "label") if c in cells.table.columns]
        table = pd.concat([cells.table[ids].reset_index(drop=True), pd.DataFrame(feats, columns=cols)], axis=1)
        meta = {"feature_columns": cols, "classes": cells.classes, "source": self.name}
        return {"features": FeatureTable(ctx.out_dir("features"), table, meta).save()}


@hookimpl
def register_normalizers(register):
    register(GreyWorld)


@hookimpl
def register_feature_extractors(register):
    register(ColourStats)
