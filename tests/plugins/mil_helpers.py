"""Small synthetic MIL inputs built in tests (no image pipeline needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hemaflow.plugins.artifacts import CellSet, FeatureTable, Split


def synthetic_instances(root: Path, *, n_patients: int = 24, cells: tuple[int, int] = (8, 30), dim: int = 8,
                        abnormal_rate: float = 0.2, seed: int = 0, classes=("AML", "NORMAL"),
                        crop_size: int = 8) -> tuple[FeatureTable, CellSet]:
    """Patients alternate between classes; in AML patients a minority of cells (``abnormal_rate``)
    carries the signal (feature 0 shifted by +3), every other cell is noise."""
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    for i in range(n_patients):
        pid = f"P{i:02d}"
        label = classes[i % len(classes)]
        n = int(rng.integers(cells[0], cells[1] + 1))
        for c in range(n):
            img = f"{pid}_img{c % 3}"
            abnormal = label != "NORMAL" and rng.random() < abnormal_rate
            if label != "NORMAL" and c == 0:
                abnormal = True  # every abnormal patient has at least one abnormal cell
            f = rng.normal(size=dim)
            if abnormal:
                f[0] += 3.0
            rows.append({"cell_id": f"{img}:{c}", "image_id": img, "patient_id": pid, "label": label,
                         "centroid_y": float(c), "centroid_x": float(2 * c), "truth": "abnormal" if abnormal else "normal"})
            feats.append(f)
    t = pd.DataFrame(rows)
    cols = [f"f{j}" for j in range(dim)]
    ft = pd.concat([t[["cell_id", "image_id", "patient_id", "label"]], pd.DataFrame(np.array(feats), columns=cols)], axis=1)
    features = FeatureTable(root / "features", ft, {"feature_columns": cols, "classes": list(classes)}).save()
    cdir = root / "cells"
    cdir.mkdir(parents=True, exist_ok=True)
    crops = rng.integers(0, 255, size=(len(t), crop_size, crop_size, 3), dtype=np.uint8)
    np.save(cdir / "crops.npy", crops)
    np.save(cdir / "crop_masks.npy", np.ones((len(t), crop_size, crop_size), np.uint8))
    ct = t.assign(crop_index=np.arange(len(t)), bbox_y0=0, bbox_x0=0, bbox_y1=crop_size, bbox_x1=crop_size, area=10)
    cellset = CellSet(cdir, ct, {"crop_size": crop_size, "classes": list(classes)}).save()
    return features, cellset


def kfold_split(root: Path, patients: list[str], labels: list[str], k: int = 3, seed: int = 0) -> Split:
    """Stratified patient k-fold with one validation patient per class carved from each training fold."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"patient_id": patients, "label": labels})
    fold_of = {}
    for _, g in df.groupby("label"):
        ids = list(g["patient_id"])
        rng.shuffle(ids)
        for j, p in enumerate(ids):
            fold_of[p] = j % k
    rows = []
    for f in range(k):
        val = set()
        for _, g in df[[fold_of[p] != f for p in df["patient_id"]]].groupby("label"):
            val.add(g["patient_id"].iloc[0])
        for p in patients:
            part = "test" if fold_of[p] == f else ("val" if p in val else "train")
            rows.append({"fold": f, "patient_id": p, "partition": part})
    return Split(root / "split", pd.DataFrame(rows), {"kind": "kfold", "n_folds": k}).save()
