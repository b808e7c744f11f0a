"""The class signal of the synthetic smears, measured with hand-crafted features of each cell.

Shared by ``tests/plugins/test_synthetic.py`` (the signal is real, and lives in the bag) and
``benchmarks/bench_synthetic_signal.py`` (the same measurement over several seeds).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def cell_features(images) -> pd.DataFrame:
    """Hand-crafted features per white cell from the ground-truth masks: area, nucleus area, N/C
    ratio, nucleus lobes, nucleus intensity mean/std, nucleus vs cytoplasm intensity, cytoplasm
    blue-minus-red; one row per cell with its ``patient_id`` and ``label``."""
    from scipy import ndimage as ndi

    rows = []
    for _, r in images.table.iterrows():
        img = images.read_image(r).astype(np.float32)
        mask = images.read_mask(r)
        grey = img.mean(-1)
        lab, n = ndi.label(mask > 0)
        for k in range(1, n + 1):
            cell = lab == k
            nuc, cyto = cell & (mask == 2), cell & (mask == 1)
            if nuc.sum() == 0:
                continue
            g = grey[nuc]
            rows.append({
                "patient_id": r.patient_id, "label": r.label,
                "area": cell.sum(), "nucleus_area": nuc.sum(), "nc_ratio": nuc.sum() / cell.sum(),
                "lobes": ndi.label(nuc)[1], "nucleus_mean": g.mean(), "nucleus_std": g.std(),
                "nucleus_vs_cytoplasm": g.mean() / grey[cyto].mean() if cyto.any() else 1.0,
                "cytoplasm_blue_minus_red": (img[cyto][:, 2] - img[cyto][:, 0]).mean() if cyto.any() else 0.0,
            })
    return pd.DataFrame(rows)


def bag_vs_one_cell(cells: pd.DataFrame, seed: int) -> tuple[float, float]:
    """Patient accuracy of a random forest (5-fold stratified CV over patients) from the bag of the
    patient's cells (per-patient mean/min/max of every feature) and from one random cell of the
    patient (``seed`` picks it)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    feats = [c for c in cells.columns if c not in ("patient_id", "label")]
    bag = cells.groupby("patient_id")[feats].agg(["mean", "min", "max"])
    y = np.array(cells.groupby("patient_id")["label"].first().loc[bag.index].tolist())
    rng = np.random.default_rng(seed)
    one = cells.groupby("patient_id")[feats].apply(lambda g: g.iloc[rng.integers(len(g))]).loc[bag.index]
    one_x = np.concatenate([one.to_numpy()] * 3, axis=1)  # same shape: mean = min = max = the cell

    def accuracy(x: np.ndarray) -> float:
        pred = cross_val_predict(RandomForestClassifier(n_estimators=150, random_state=0), x, y,
                                 cv=StratifiedKFold(5, shuffle=True, random_state=0))
        return float((pred == y).mean())

    return accuracy(bag.to_numpy()), accuracy(one_x)
