"""A hemaflow cell extractor: one square crop per connected component of the mask."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from hemaflow import CellExtractor, hookimpl
from hemaflow.plugins.artifacts import CellSet, ImageSet, MaskSet

COLUMNS = ["cell_id", "image_id", "patient_id", "label", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1",
           "centroid_y", "centroid_x", "area", "crop_index"]


class TemplateComponent(CellExtractor):
    """A ``crop_size`` window around each cell's centroid (zero padding at the border).

    Inputs ``images: ImageSet`` and ``masks: MaskSet``; output ``cells: CellSet`` with crops
    (uint8 N x S x S x 3) and crop masks (uint8 N x S x S, 0/1/2, only that cell). An image
    without cells adds no rows.
    """

    name = "template_component"
    version = "1"
    schema = {
        "type": "object",
        "properties": {"crop_size": {"type": "integer", "minimum": 8, "maximum": 512, "default": 32}},
        "additionalProperties": False,
    }

    def run(self, ctx, images: ImageSet, masks: MaskSet):
        S = int(self.params["crop_size"])
        h = S // 2
        rows, crops, crop_masks = [], [], []
        for _, row in ctx.progress(list(images.table.iterrows()), description="cells"):
            img, mask = images.read_image(row), masks.read_mask(str(row["image_id"]))
            labels, _ = ndi.label(mask > 0)
            img_p = np.pad(img, ((h, S), (h, S), (0, 0)))
            own_p = np.pad(labels, ((h, S), (h, S)))
            mask_p = np.pad(mask, ((h, S), (h, S)))
            for k, (sy, sx) in enumerate(ndi.find_objects(labels), start=1):
                if sy is None:
                    continue
                cy, cx = ndi.center_of_mass(labels == k)
                y0, x0 = int(round(cy)), int(round(cx))  # window top-left in padded coordinates
                crops.append(img_p[y0:y0 + S, x0:x0 + S])
                crop_masks.append(np.where(own_p[y0:y0 + S, x0:x0 + S] == k, mask_p[y0:y0 + S, x0:x0 + S], 0))
                rows.append({"cell_id": f"{row['image_id']}:{k}", "image_id": row["image_id"],
                             "patient_id": row["patient_id"], "label": row["label"], "bbox_y0": sy.start,
                             "bbox_x0": sx.start, "bbox_y1": sy.stop, "bbox_x1": sx.stop, "centroid_y": float(cy),
                             "centroid_x": float(cx), "area": int((labels == k).sum()), "crop_index": len(rows)})
        out = ctx.out_dir("cells")
        np.save(out / "crops.npy", np.array(crops, np.uint8).reshape(-1, S, S, 3))
        np.save(out / "crop_masks.npy", np.array(crop_masks, np.uint8).reshape(-1, S, S))
        meta = {"crop_size": S, "classes": images.classes, "source": self.name,
                "patients_are_images": bool(images.meta.get("patients_are_images"))}
        return {"cells": CellSet(out, pd.DataFrame(rows, columns=COLUMNS), meta).save()}


@hookimpl
def register_cell_extractors(register):
    register(TemplateComponent)
