"""Write a pseudo-patient export from real wbc-crops cells, in the layout ``patient_folders`` reads.

``python benchmarks/wbc_pseudo_export.py OUT_DIR [--per-class 12] [--bag 24]`` writes
``OUT_DIR/export/<patient>/<cell>.bmp`` (+ ``<cell>_mask.png``; symlinks into
``../shared/data/wbc-crops``) and ``OUT_DIR/labels.csv`` (``patient, diagnosis, cohort``; the cohort
is the source: tecom or cellavision). Per source ``--per-class`` patients per class with ``--bag``
cells each: POS bags hold 10-30% lymphocytes, NEG bags 0-5%, the rest neutrophils (seed 0). The
small CellaVision set repeats cells (37 lymphocytes, 33 neutrophils). An ad hoc check of the
classical baseline and the cohort diagnostics (docs/mil.md "Numbers"), not the dev benchmark.
Masks: read with ``mask_spec: {mode: threshold, cell: 64, nucleus: 192}``.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wbc-crops"
NEUTROPHIL, LYMPHOCYTE = 1, 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument("--bag", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    rows = []
    for source in ("tecom", "cellavision"):
        with open(DATA / source / "labels.csv") as f:
            reader = csv.reader(f)
            next(reader)
            lab = {int(i): int(c) for i, c in reader}
        ids = {c: [i for i, v in lab.items() if v == c and (DATA / source / f"{i:03d}.bmp").exists()]
               for c in (NEUTROPHIL, LYMPHOCYTE)}
        for cls, (lo, hi) in (("POS", (0.1, 0.3)), ("NEG", (0.0, 0.05))):
            for k in range(a.per_class):
                pid = f"{source[:2]}_{cls}_{k:02d}"
                n_l = int(round(rng.uniform(lo, hi) * a.bag))
                cells = list(rng.choice(ids[LYMPHOCYTE], n_l)) + list(rng.choice(ids[NEUTROPHIL], a.bag - n_l))
                d = a.out / "export" / pid
                d.mkdir(parents=True, exist_ok=True)
                for j, i in enumerate(cells):
                    stem = f"{int(i):03d}"
                    os.symlink((DATA / source / f"{stem}.bmp").resolve(), d / f"c{j:02d}_{stem}.bmp")
                    os.symlink((DATA / source / f"{stem}.png").resolve(), d / f"c{j:02d}_{stem}_mask.png")
                rows.append((pid, cls, source))
    with open(a.out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patient", "diagnosis", "cohort"])
        w.writerows(rows)
    print(f"{len(rows)} patients -> {a.out}")


if __name__ == "__main__":
    main()
