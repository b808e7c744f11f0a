"""How much of the synthetic diagnosis is in one cell vs the whole bag of a patient's cells.

Hand-crafted features of each white cell (from the ground-truth masks: area, nucleus area, N/C
ratio, nucleus lobes, nucleus intensity mean/std, nucleus vs cytoplasm intensity, cytoplasm
blue-minus-red), a random forest, 5-fold stratified CV over patients:
    bag:      per-patient mean/min/max over all the patient's cells
    one cell: the features of one random cell of the patient
Run: ``python benchmarks/bench_synthetic_signal.py [n_seeds] [patients_per_class]``.
"""

from __future__ import annotations

import sys
import tempfile

import numpy as np
import pandas as pd

from hemaflow.plugins.datasets import SyntheticSmears
from hemaflow.testing import make, make_context


def cell_features(images) -> pd.DataFrame:
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
            rows.append({"patient_id": r.patient_id, "label": r.label, "area": cell.sum(),
                         "nucleus_area": nuc.sum(), "nc_ratio": nuc.sum() / cell.sum(), "lobes": ndi.label(nuc)[1],
                         "nucleus_mean": g.mean(), "nucleus_std": g.std(),
                         "nucleus_vs_cytoplasm": g.mean() / grey[cyto].mean() if cyto.any() else 1.0,
                         "cytoplasm_blue_minus_red": (img[cyto][:, 2] - img[cyto][:, 0]).mean() if cyto.any() else 0.0})
    return pd.DataFrame(rows)


def evaluate(seed: int, patients_per_class: int = 10, images_per_patient: int = 2, size: int = 144) -> tuple[float, float]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    with tempfile.TemporaryDirectory() as d:
        images = make(SyntheticSmears, patients_per_class=patients_per_class, images_per_patient=images_per_patient,
                      image_size=size).run(make_context(d, seed=seed))["images"]
        cells = cell_features(images)
    feats = [c for c in cells.columns if c not in ("patient_id", "label")]
    bag = cells.groupby("patient_id")[feats].agg(["mean", "min", "max"])
    y = np.array(cells.groupby("patient_id")["label"].first().loc[bag.index].tolist())
    rng = np.random.default_rng(seed)
    one = cells.groupby("patient_id")[feats].apply(lambda g: g.iloc[rng.integers(len(g))]).loc[bag.index]
    one_x = np.concatenate([one.to_numpy()] * 3, axis=1)

    def acc(x):
        pred = cross_val_predict(RandomForestClassifier(n_estimators=150, random_state=0), x, y,
                                 cv=StratifiedKFold(5, shuffle=True, random_state=0))
        return float((pred == y).mean())

    return acc(bag.to_numpy()), acc(one_x)


if __name__ == "__main__":
    n_seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    ppc = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    res = []
    for s in range(n_seeds):
        b, o = evaluate(s, ppc)
        res.append((b, o))
        print(f"seed {s}: patient accuracy from the bag {b:.2f}, from one random cell {o:.2f} (chance 0.20)")
    r = np.array(res)
    print(f"mean over {n_seeds} seeds: bag {r[:, 0].mean():.2f}, one cell {r[:, 1].mean():.2f}")
