"""A hemaflow data set: small synthetic smear fields, written as PNG files with their masks."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hemaflow import Dataset, hookimpl
from hemaflow.plugins.artifacts import ImageSet
from hemaflow.lib.imageio import write_png


class TemplateComponent(Dataset):
    """Synthetic smear fields: one white cell per field, larger nuclei in the 'ALL' class.

    Outputs ``images: ImageSet`` (RGB uint8 PNGs with canonical 0/1/2 masks). A data set that
    reads files works the same way: list them, write one row per image with an absolute
    ``path``, and return a hash of the files from ``fingerprint()``.
    """

    name = "template_component"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "patients_per_class": {"type": "integer", "minimum": 1, "default": 3},
            "images_per_patient": {"type": "integer", "minimum": 1, "default": 2},
            "image_size": {"type": "integer", "minimum": 32, "maximum": 1024, "default": 64},
        },
        "additionalProperties": False,
    }

    def run(self, ctx, **inputs):
        out = ctx.out_dir("images")
        (out / "files").mkdir(exist_ok=True)
        size = int(self.params["image_size"])
        yy, xx = np.mgrid[:size, :size]
        rows = []
        for ci, label in enumerate(("ALL", "normal")):
            for k in range(int(self.params["patients_per_class"])):
                pid = f"{label}-{k}"
                for i in range(int(self.params["images_per_patient"])):
                    rng = ctx.rng(pid, i)  # seeded by the recipe's seed: the same fields every run
                    cy, cx = rng.integers(size // 3, 2 * size // 3, size=2)
                    r = size // 5
                    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
                    mask = np.zeros((size, size), np.uint8)
                    mask[d2 <= r * r] = 1
                    mask[d2 <= (r * (0.7 if label == "ALL" else 0.45)) ** 2] = 2
                    img = np.full((size, size, 3), (228, 226, 214), np.float64)
                    img[mask == 1] = (196, 178, 214)
                    img[mask == 2] = (90, 50, 150)
                    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
                    iid = f"{pid}_{i}"
                    write_png(out / "files" / f"{iid}.png", img)
                    write_png(out / "files" / f"{iid}_mask.png", mask)
                    rows.append({"image_id": iid, "patient_id": pid, "label": label,
                                 "path": f"files/{iid}.png", "mask_path": f"files/{iid}_mask.png"})
        meta = {"classes": ["ALL", "normal"], "mask_spec": {"mode": "canonical"}, "patients_are_images": False}
        return {"images": ImageSet(out, pd.DataFrame(rows), meta).save()}


@hookimpl
def register_datasets(register):
    register(TemplateComponent)
