"""How much of the synthetic diagnosis is in one cell vs the whole bag of a patient's cells.

Hand-crafted features of each white cell (from the ground-truth masks: area, nucleus area, N/C
ratio, nucleus lobes, nucleus intensity mean/std, nucleus vs cytoplasm intensity, cytoplasm
blue-minus-red; ``tests/plugins/synthetic_helpers.py``, the same measurement as the test), a
random forest, 5-fold stratified CV over patients:
    bag:      per-patient mean/min/max over all the patient's cells
    one cell: the features of one random cell of the patient
Run: ``python benchmarks/bench_synthetic_signal.py [n_seeds] [patients_per_class]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from hemaflow.plugins.datasets import SyntheticSmears
from hemaflow.testing import make, make_context

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.plugins.synthetic_helpers import bag_vs_one_cell, cell_features  # noqa: E402


def evaluate(seed: int, patients_per_class: int = 10, images_per_patient: int = 2, size: int = 144) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        images = make(SyntheticSmears, patients_per_class=patients_per_class, images_per_patient=images_per_patient,
                      image_size=size).run(make_context(d, seed=seed))["images"]
        cells = cell_features(images)
    return bag_vs_one_cell(cells, seed)


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
