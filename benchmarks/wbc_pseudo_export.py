"""Write a pseudo-patient export from real wbc-crops cells, in the layout ``patient_folders`` reads.

``python benchmarks/wbc_pseudo_export.py OUT_DIR [--per-class 12] [--bag 24]`` writes
``OUT_DIR/export/<patient>/<cell>.bmp`` (+ ``<cell>_mask.png``; symlinks into
``../shared/data/wbc-crops``) and ``OUT_DIR/labels.csv`` (``patient, diagnosis, cohort``; the cohort
is the source: tecom or cellavision). Per source ``--per-class`` patients per class with ``--bag``
cells each: POS bags hold 10-30% lymphocytes, NEG bags 0-5%, the rest neutrophils (seed 0). The
small CellaVision set repeats cells (37 lymphocytes, 33 neutrophils). An ad hoc check of the
classical baseline and the cohort diagnostics (docs/mil.md "Numbers"), not the dev benchmark.
Masks: read with ``mask_spec: {mode: threshold, cell: 64, nucleus: 192}``.

``--minority 3 --rest 1,2`` (monocytes at the POS/NEG rates, the rest neutrophils and
lymphocytes in a per-patient mix) and ``--um-per-px tecom=0.16,cellavision=0.07`` (a labels column
``um_per_px`` per source, read by ``single_cells``) are what ``benchmarks/bench_exports.py`` (the dev
benchmark) uses through :func:`write_export`.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wbc-crops"
SOURCES = ("tecom", "cellavision")
NEUTROPHIL, LYMPHOCYTE, MONOCYTE, EOSINOPHIL, BASOPHIL = 1, 2, 3, 4, 5
CELL_TYPES = {1: "neutrophil", 2: "lymphocyte", 3: "monocyte", 4: "eosinophil", 5: "basophil"}
POS_RATE, NEG_RATE = (0.1, 0.3), (0.0, 0.05)


def cell_ids(source: str) -> dict[int, list[int]]:
    """Image ids of ``source`` per cell type (images that exist only)."""
    with open(DATA / source / "labels.csv") as f:
        reader = csv.reader(f)
        next(reader)
        lab = {int(i): int(c) for i, c in reader}
    return {c: [i for i, v in lab.items() if v == c and (DATA / source / f"{i:03d}.bmp").exists()]
            for c in CELL_TYPES}


def write_export(out: Path, *, per_class: int = 12, bag: int = 24, seed: int = 0, minority: int = LYMPHOCYTE,
                 rest: tuple[int, ...] = (NEUTROPHIL,), sources: tuple[str, ...] = SOURCES, masks: bool = True,
                 um_per_px: dict[str, float] | None = None) -> list[dict[str, object]]:
    """Write ``out/export/<patient>/`` (symlinks) and ``out/labels.csv``; return one dict per patient.

    POS bags hold ``POS_RATE`` (uniform per patient) of ``minority`` cells, NEG bags ``NEG_RATE``;
    the rest of the bag is drawn from the ``rest`` types, with a per-patient mix (uniform weights
    from a flat Dirichlet) when there are several, so the mix carries no label. Cells are drawn
    with replacement from one source's images: a small source repeats cells within and across bags.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for source in sources:
        ids = cell_ids(source)
        for cls, (lo, hi) in (("POS", POS_RATE), ("NEG", NEG_RATE)):
            for k in range(per_class):
                pid = f"{source[:2]}_{cls}_{k:02d}"
                n_m = int(round(rng.uniform(lo, hi) * bag))
                cells = list(rng.choice(ids[minority], n_m))
                if len(rest) == 1:
                    cells += list(rng.choice(ids[rest[0]], bag - n_m))
                else:
                    w = rng.dirichlet(np.ones(len(rest)))
                    types = rng.choice(len(rest), bag - n_m, p=w)
                    cells += [int(rng.choice(ids[rest[t]])) for t in types]
                d = out / "export" / pid
                d.mkdir(parents=True, exist_ok=True)
                for j, i in enumerate(cells):
                    stem = f"{int(i):03d}"
                    os.symlink((DATA / source / f"{stem}.bmp").resolve(), d / f"c{j:02d}_{stem}.bmp")
                    if masks:
                        os.symlink((DATA / source / f"{stem}.png").resolve(), d / f"c{j:02d}_{stem}_mask.png")
                row: dict[str, object] = {"patient": pid, "diagnosis": cls, "cohort": source}
                if um_per_px is not None:
                    row["um_per_px"] = um_per_px[source]
                row.update(n_cells=bag, minority_fraction=n_m / bag, unique_cells=len(set(cells)))
                rows.append(row)
    cols = ["patient", "diagnosis", "cohort"] + (["um_per_px"] if um_per_px is not None else [])
    with open(out / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows([[r[c] for c in cols] for r in rows])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument("--bag", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minority", type=int, default=LYMPHOCYTE, choices=sorted(CELL_TYPES))
    ap.add_argument("--rest", default=str(NEUTROPHIL), help="comma-separated cell types of the rest of a bag")
    ap.add_argument("--um-per-px", default=None, help="e.g. tecom=0.16,cellavision=0.07: a labels column")
    ap.add_argument("--no-masks", action="store_true", help="do not link the data set's masks")
    a = ap.parse_args()
    um = None if a.um_per_px is None else {k: float(v) for k, v in (kv.split("=") for kv in a.um_per_px.split(","))}
    rows = write_export(a.out, per_class=a.per_class, bag=a.bag, seed=a.seed, minority=a.minority,
                        rest=tuple(int(x) for x in a.rest.split(",")), masks=not a.no_masks, um_per_px=um)
    print(f"{len(rows)} patients -> {a.out}")


if __name__ == "__main__":
    main()
