"""Speed of ``single_cells``: read + segment + crop of real single-cell crops.

On ``../shared/data/wbc-crops`` (CellaVision 300 px, Tecom 120 px), default parameters (adaptive
segmenter on a copy of at most 128 px, 256 px window at native pixels):

* ``worker``: the per-image worker function in a plain loop, one process; crops per second of
  wall time and per CPU-second (the per-core number, independent of other load on the machine);
* ``step``: the whole ``single_cells`` step (header pass, workers, writing the CellSet) with the
  serial executor and with ``processes`` (``--workers``).

Usage::

    python benchmarks/bench_single_cells.py [--source cellavision] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hemaflow.plugins.artifacts import ImageSet  # noqa: E402
from hemaflow.plugins.executors import ProcessExecutor  # noqa: E402
from hemaflow.plugins.single_cells import SingleCells, single_cell_item  # noqa: E402
from hemaflow.testing import defaults, make, make_context  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "wbc-crops"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", default="cellavision", choices=["cellavision", "tecom"])
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    files = sorted((DATA / a.source).glob("*.bmp"))
    p = defaults(SingleCells)
    single_cell_item((str(files[0]), None, None, 1.0, p))  # imports outside the timing
    t, c = time.perf_counter(), time.process_time()
    kept = sum("crop" in single_cell_item((str(f), None, None, 1.0, p)) for f in files)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    print(f"worker {a.source}: {len(files)} images, {kept} kept: {len(files) / wall:.1f} crops/s wall, "
          f"{len(files) / cpu:.1f} crops/s per CPU-second (load {os.getloadavg()[0]:.1f})")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [{"image_id": f.stem, "patient_id": "P", "label": "", "path": str(f)} for f in files]
        images = ImageSet(Path(tmp) / "d", pd.DataFrame(rows), {"classes": []}).save()
        for name, ex in [("serial", None), (f"processes x{a.workers}", make(ProcessExecutor, workers=a.workers))]:
            t = time.perf_counter()
            make(SingleCells).run(make_context(Path(tmp) / name.split()[0], executor=ex), images=images)
            print(f"step {name}: {len(files) / (time.perf_counter() - t):.1f} crops/s wall")


if __name__ == "__main__":
    main()
