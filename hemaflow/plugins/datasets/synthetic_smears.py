"""``synthetic_smears``: the built-in data set, Giemsa-like fields with ground-truth masks.

The drawing code is :mod:`hemaflow.lib.smear_generator`; this module turns it into a component:
patient ids, sites, one ``ctx.map`` item per field, the ImageSet with its per-cell ground truth
and a report table and gallery.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.bases import Dataset
from hemaflow.core.component import RunContext
from hemaflow.core.markers import hookimpl
from hemaflow.lib import imageio as io
from hemaflow.plugins.artifacts import ImageSet
from hemaflow.plugins.datasets.common import _schema


# -- synthetic smears -------------------------------------------------------------------------------
def _render_item(item: dict[str, Any]) -> list[dict[str, Any]]:
    """Render and write one synthetic field (top-level so process executors can pickle it)."""
    from hemaflow.lib.smear_generator import render_field

    image, mask, cells = render_field(item["plan"], item["index"], item["size"])
    io.write_png(item["image_file"], image)
    io.write_png(item["mask_file"], mask)
    for c in cells:
        c["image_id"] = item["image_id"]
    return cells


class SyntheticSmears(Dataset):
    """Procedurally generated Giemsa-like blood-smear fields with ground-truth white-cell masks.

    One row per field; masks are canonical PNGs (0 background, 1 cytoplasm, 2 nucleus); the
    per-cell ground truth (``image_id, centroid_y, centroid_x, truth, cell_type``) is in
    ``cell_truth.parquet`` (``ImageSet.cell_truth()``). Deterministic for a given ``seed`` (or
    the recipe's seed); each patient is generated from its own random stream, so adding patients
    does not change the existing ones.
    """

    kind = "dataset"
    name = "synthetic_smears"
    version = "2"
    schema = _schema({
        "classes": {"type": "array", "items": {"enum": ["ALL", "AML", "APL", "CLL", "CML", "NORMAL"]},
                    "minItems": 2, "uniqueItems": True, "default": ["ALL", "AML", "CLL", "CML", "NORMAL"],
                    "description": "diagnoses to generate (APL optional)"},
        "patients_per_class": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 8,
                               "description": "patients per class"},
        "images_per_patient": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 3,
                               "description": "fields (images) per patient"},
        "image_size": {"type": "integer", "minimum": 48, "maximum": 4096, "default": 256,
                       "description": "side of the square fields in pixels"},
        "wbc_per_image": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 50},
                          "minItems": 2, "maxItems": 2, "default": [1, 4],
                          "description": "[min, max] white cells per field (fewer when they do not fit)"},
        "abnormal_rate": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1},
                          "minItems": 2, "maxItems": 2, "default": [0.3, 0.7],
                          "description": "[min, max] of each leukemic patient's share of abnormal "
                                         "white cells; the rest are a normal differential"},
        "stain_variation": {"type": "number", "minimum": 0, "maximum": 3, "default": 1.0,
                            "description": "strength of each patient's (or site's) stain colour shift; "
                                           "0 = identical staining"},
        "sites": {"type": "integer", "minimum": 1, "maximum": 100, "default": 1,
                  "description": "number of labs: with more than one, patients are spread over sites "
                                 "(column 'site', stratified by class) and each site has its own "
                                 "stain, with a smaller per-patient shift on top"},
        "difficulty": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                       "description": "0 easy .. 1 hard: widens the morphology ranges (more overlap "
                                      "between cell types) and adds blur and noise"},
        "pixels_per_um": {"type": "number", "minimum": 0.5, "maximum": 10, "default": 2.2,
                          "description": "drawing scale (a red cell is about 7.5 um across)"},
        "seed": {"type": ["integer", "null"], "minimum": 0, "default": None,
                 "description": "data seed; null uses the recipe's seed"},
    })
    inputs: dict[str, str] = {}
    outputs = {"images": "ImageSet"}

    def run(self, ctx: RunContext) -> dict[str, Any]:
        from hemaflow.lib.smear_generator import patient_plan, stain_shift

        p = self.params
        lo, hi = sorted(p["wbc_per_image"])
        rlo, rhi = sorted(p["abnormal_rate"])
        seed = int(p["seed"] if p["seed"] is not None else ctx.seed)
        classes = list(p["classes"])
        n_pat = int(p["patients_per_class"])
        out = ctx.out_dir("images")
        (out / "img").mkdir(exist_ok=True)
        (out / "mask").mkdir(exist_ok=True)
        # neutral patient ids (P001...) in a seeded random order, so an id says nothing about a class
        order = np.random.default_rng([seed, 7]).permutation(len(classes) * n_pat)
        width = max(3, len(str(len(order))))
        sites = int(p["sites"])
        site_shifts = [stain_shift(np.random.default_rng([seed, 11, s]), p["stain_variation"]) for s in range(sites)]
        rows, items, patients = [], [], []
        for ci, label in enumerate(classes):
            site_of = np.random.default_rng([seed, 13, ci]).permutation(n_pat) % sites
            for k in range(n_pat):
                pid = f"P{order[ci * n_pat + k] + 1:0{width}d}"
                plan = patient_plan(label, seed=(seed, ci, k), n_images=int(p["images_per_patient"]),
                                    wbc_per_image=(lo, hi), abnormal_rate=(rlo, rhi),
                                    stain_variation=float(p["stain_variation"]), difficulty=float(p["difficulty"]),
                                    pixels_per_um=float(p["pixels_per_um"]),
                                    site_shift=site_shifts[site_of[k]] if sites > 1 else None)
                site = f"site{site_of[k] + 1}"
                patients.append({"patient_id": pid, "label": label, "site": site,
                                 "abnormal_rate": plan.abnormal_rate})
                for i in range(int(p["images_per_patient"])):
                    iid = f"{pid}_{i:02d}"
                    rows.append({"image_id": iid, "patient_id": pid, "label": label,
                                 "path": f"img/{iid}.png", "mask_path": f"mask/{iid}.png", "site": site})
                    items.append({"plan": plan, "index": i, "size": int(p["image_size"]), "image_id": iid,
                                  "image_file": str(out / "img" / f"{iid}.png"),
                                  "mask_file": str(out / "mask" / f"{iid}.png")})
        cells = [c for cs in ctx.map(_render_item, items, description="synthetic smears") for c in cs]
        table = pd.DataFrame(rows).sort_values("image_id", kind="stable").reset_index(drop=True)
        truth = pd.DataFrame(cells, columns=["image_id", "centroid_y", "centroid_x", "truth", "cell_type"])
        truth.to_parquet(out / "cell_truth.parquet", index=False)
        pat = pd.DataFrame(patients).sort_values("patient_id").reset_index(drop=True)
        pat.to_parquet(out / "patients.parquet", index=False)
        meta = {"classes": classes, "mask_spec": {"mode": "canonical"}, "patients_are_images": False,
                "cell_truth": "cell_truth.parquet", "patients": "patients.parquet", "skipped": [],
                "source": "synthetic_smears", "image_size": int(p["image_size"]), "seed": seed}
        images = ImageSet(out, table, meta).save()
        self._report(ctx, images, truth, pat)
        return {"images": images}

    @staticmethod
    def _report(ctx: RunContext, images: ImageSet, truth: pd.DataFrame, pat: pd.DataFrame) -> None:
        t = images.table
        per_img = truth.merge(t[["image_id", "label"]], on="image_id")
        rows = []
        for label in images.classes:
            sub = per_img[per_img["label"] == label]
            rows.append({"class": label, "patients": int((pat["label"] == label).sum()),
                         "images": int((t["label"] == label).sum()), "white cells": len(sub),
                         "abnormal cells": f"{(sub['truth'] == 'abnormal').mean():.0%}" if len(sub) else "-"})
        ctx.report.table("Synthetic data set", rows, section="data")
        samples = []
        for label in images.classes:
            first = t[t["label"] == label].iloc[0]
            samples.append((f"{label} ({first['image_id']})", io.png_bytes(images.read_image(first), max_side=256)))
        ctx.report.gallery("One field per class", samples, section="data")


@hookimpl
def register_datasets(register: Any) -> None:
    register(SyntheticSmears)
