"""Tiny smear fields and ImageSets for the normalize/segment/postprocess/cells tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hemaflow.lib import imageio as io
from hemaflow.plugins.artifacts import ImageSet

BG = (228, 226, 214)
RBC = (214, 140, 150)
CYTO = (196, 178, 214)
NUC = (92, 52, 158)

BCCD_IDS = ["BloodImage_00001", "BloodImage_00003", "BloodImage_00004", "BloodImage_00010"]


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def field(size=(96, 128), wbcs=((48, 40, 18),), rbcs=((20, 100, 12), (75, 100, 12)), seed=0):
    """RGB uint8 field with white cells (cy, cx, r) and red cells; returns (image, mask 0/1/2)."""
    rng = np.random.default_rng(seed)
    img = np.empty(size + (3,), np.float32)
    img[:] = BG
    mask = np.zeros(size, np.uint8)
    for cy, cx, r in rbcs:
        img[disc(size, cy, cx, r)] = RBC
    for cy, cx, r in wbcs:
        c = disc(size, cy, cx, r)
        n = disc(size, cy, cx, r * 0.6)
        img[c] = CYTO
        img[n] = NUC
        mask[c] = 1
        mask[n] = 2
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def image_set(root: Path, fields, *, labels=None, cell_truth: pd.DataFrame | None = None) -> ImageSet:
    """Write (image, mask) pairs as PNGs and return a saved ImageSet with canonical masks."""
    root = Path(root)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, mask) in enumerate(fields):
        iid = f"im{i}"
        io.write_png(root / "img" / f"{iid}.png", img)
        row = {"image_id": iid, "patient_id": f"p{i // 2}", "label": (labels or ["ALL", "normal"])[i % 2],
               "path": f"img/{iid}.png"}
        if mask is not None:
            io.write_png(root / "img" / f"{iid}_mask.png", mask)
            row["mask_path"] = f"img/{iid}_mask.png"
        rows.append(row)
    meta = {"classes": sorted({r["label"] for r in rows}), "mask_spec": {"mode": "canonical"}}
    if cell_truth is not None:
        cell_truth.to_parquet(root / "cell_truth.parquet")
        meta["cell_truth"] = "cell_truth.parquet"
    return ImageSet(root, pd.DataFrame(rows), meta).save()


def bccd_image_set(shared_data: Path, root: Path, ids=BCCD_IDS) -> ImageSet:
    """An ImageSet over a few real BCCD fields, read in place (absolute paths)."""
    base = shared_data / "bccd-fields"
    rows = [{"image_id": i, "patient_id": i, "label": "",
             "path": str(base / "images" / f"{i}.jpg"),
             "mask_path": str(base / "masks" / f"{i.replace('Image_', 'Image_Mask_')}.png")} for i in ids]
    meta = {"classes": [], "patients_are_images": True,
            "mask_spec": {"mode": "threshold", "cell": 64, "nucleus": 208}}
    return ImageSet(Path(root), pd.DataFrame(rows), meta).save()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)
