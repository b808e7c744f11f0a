"""Per-cell radiomics cost: hemaflow's ``radiomics`` step vs pyradiomics called directly.

All seven feature classes (firstorder, shape2D, glcm, glrlm, glszm, gldm, ngtdm) on real white
cells from ``../shared/data/wbc-crops/tecom`` resized to 96x96 px, luminance grey, whole-cell
region, binWidth 25. Measured side by side in one process, interleaved over rounds (best of
``--rounds`` per variant, since the machine may be shared):

* serial: ``RadiomicsFeatures.run`` with the serial executor (including reading crops from the
  memory-mapped CellSet, building the table and writing Parquet) vs a plain loop of
  ``RadiomicsFeatureExtractor.execute`` on the same (1, H, W) images;
* 2 workers: the same step with the ``processes`` executor (2 workers) vs a plain
  ``multiprocessing.Pool(2).map`` over the same crops (both timings include starting the pool).

Usage::

    python benchmarks/bench_radiomics.py [--cells 96] [--size 96] [--rounds 3] [--workers 2]
    python benchmarks/bench_radiomics.py --trap-only   # count what the force2D trap changes

Engine overhead in instructions (independent of machine load): run one serial variant with 1 and 2
passes under callgrind; the difference is one pass over the cells::

    PY=$(python -c "import sys; print(sys.executable)")   # the real binary, not a pyenv shim
    for v in direct_1t hemaflow; do for r in 1 2; do
      valgrind --tool=callgrind --callgrind-out-file=/dev/null $PY benchmarks/bench_radiomics.py \
        --only $v --reps $r --cells 16 2>&1 | grep "Collected"; done; done
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hemaflow.plugins.artifacts import CellSet  # noqa: E402
from hemaflow.plugins.executors import ProcessExecutor, SerialExecutor  # noqa: E402
from hemaflow.plugins.features import RadiomicsFeatures  # noqa: E402
from hemaflow.testing import defaults, make_context  # noqa: E402

CLASSES = ["firstorder", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm"]
WEIGHTS = np.array([0.2125, 0.7154, 0.0721])
_CROPS: np.ndarray | None = None
_MASKS: np.ndarray | None = None
_EX = None


def load_cells(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    root = REPO.parent / "shared" / "data" / "wbc-crops" / "tecom"
    names = sorted(p.stem for p in root.glob("*.bmp"))[:n]
    crops, masks = [], []
    for name in names:
        im = Image.open(root / f"{name}.bmp").convert("RGB").resize((size, size), Image.BILINEAR)
        m = np.asarray(Image.open(root / f"{name}.png").resize((size, size), Image.NEAREST))
        crops.append(np.asarray(im))
        masks.append(np.select([m == 255, m == 128], [2, 1], 0).astype(np.uint8))
    return np.stack(crops), np.stack(masks)


def direct_extractor():
    global _EX
    if _EX is None:
        import logging

        import radiomics
        from radiomics import featureextractor

        radiomics.setVerbosity(logging.ERROR)
        _EX = featureextractor.RadiomicsFeatureExtractor(force2D=True, force2Ddimension=0, binWidth=25,
                                                         additionalInfo=False)
        _EX.disableAllFeatures()
        for c in CLASSES:
            _EX.enableFeatureClassByName(c)
    return _EX


def direct_one(i: int) -> dict[str, float]:
    """pyradiomics on crop i: what a user would write by hand (same grey, mask and settings)."""
    import SimpleITK as sitk

    grey = _CROPS[i].astype(np.float64) @ WEIGHTS
    roi = (_MASKS[i] > 0).astype(np.uint8)
    res = direct_extractor().execute(sitk.GetImageFromArray(grey[None]), sitk.GetImageFromArray(roi[None]))
    return {k: float(v) for k, v in res.items()}


def set_itk_threads(n: int) -> int:
    """Set SimpleITK's global thread count (0: leave it); return the previous value."""
    import SimpleITK as sitk

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if n:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    return before


def time_direct_serial(n: int, itk: int) -> tuple[float, float, list[dict]]:
    before = set_itk_threads(itk)
    t, c = time.perf_counter(), time.process_time()
    out = [direct_one(i) for i in range(n)]
    t, c = time.perf_counter() - t, time.process_time() - c
    set_itk_threads(before)
    return t, c, out


def cpu_all() -> float:
    """CPU seconds of this process plus its reaped children (pool workers)."""
    import resource

    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def time_direct_pool(n: int, workers: int, itk: int) -> tuple[float, float]:
    t, c = time.perf_counter(), cpu_all()
    with mp.get_context("fork").Pool(workers, initializer=set_itk_threads, initargs=(itk,)) as pool:
        pool.map(direct_one, range(n))
    return time.perf_counter() - t, cpu_all() - c


def time_hemaflow(cells: CellSet, work: Path, executor) -> tuple[float, float, pd.DataFrame]:
    comp = RadiomicsFeatures(**defaults(RadiomicsFeatures, classes=CLASSES))
    ctx = make_context(work, executor=executor)
    t, c = time.perf_counter(), cpu_all()
    ft = comp.run(ctx, cells=cells)["features"]
    return time.perf_counter() - t, cpu_all() - c, ft.table


def trap_report(n: int) -> None:
    """How many of the 102 features the force2D trap changes (plain 2-D image, force2D=True)."""
    import SimpleITK as sitk

    ex = direct_extractor()
    changed: dict[str, set[str]] = {}
    total: dict[str, set[str]] = {}
    glszm_eq_glrlm = 0
    for i in range(n):
        grey = _CROPS[i].astype(np.float64) @ WEIGHTS
        roi = (_MASKS[i] > 0).astype(np.uint8)
        good = ex.execute(sitk.GetImageFromArray(grey[None]), sitk.GetImageFromArray(roi[None]))
        trap = ex.execute(sitk.GetImageFromArray(grey), sitk.GetImageFromArray(roi))
        for k, v in good.items():
            cls = k.split("_")[1]
            total.setdefault(cls, set()).add(k)
            if k not in trap or not np.isclose(float(trap[k]), float(v), rtol=1e-6, atol=1e-12):
                changed.setdefault(cls, set()).add(k)
        glszm_eq_glrlm += bool(np.isclose(float(trap["original_glszm_SmallAreaEmphasis"]),
                                          float(trap["original_glrlm_ShortRunEmphasis"]), rtol=1e-12))
    n_changed = sum(len(v) for v in changed.values())
    n_total = sum(len(v) for v in total.values())
    print(f"force2D trap (plain 2-D image, force2D=True) on {n} cells: {n_changed} of {n_total} features differ "
          f"from the (1, H, W) extraction; per class: "
          + ", ".join(f"{c} {len(changed.get(c, ()))}/{len(t)}" for c, t in total.items())
          + f"; trap GLSZM SmallAreaEmphasis == GLRLM ShortRunEmphasis in {glszm_eq_glrlm}/{n} cells")


def main() -> None:
    global _CROPS, _MASKS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=96)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trap-only", action="store_true", help="only count the features the force2D trap changes")
    ap.add_argument("--only", choices=["direct_1t", "hemaflow"],
                    help="run just this serial variant --reps times (for instruction counts under callgrind)")
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()

    _CROPS, _MASKS = load_cells(args.cells, args.size)
    if args.trap_only:
        trap_report(min(16, len(_CROPS)))
        return
    n = len(_CROPS)
    tmp = Path(tempfile.mkdtemp(prefix="bench_radiomics_", suffix=f"_{os.getpid()}"))
    table = pd.DataFrame({"cell_id": [f"c{i}:0" for i in range(n)], "image_id": [f"c{i}" for i in range(n)],
                          "patient_id": [f"c{i}" for i in range(n)], "label": "x", "crop_index": np.arange(n)})
    (tmp / "cells").mkdir()
    np.save(tmp / "cells" / "crops.npy", _CROPS)
    np.save(tmp / "cells" / "crop_masks.npy", _MASKS)
    cells = CellSet(tmp / "cells", table, {"crop_size": args.size}).save()

    if args.only:
        direct_one(0)
        time_hemaflow(CellSet(cells.path, table.iloc[:2], cells.meta), tmp / "warm", SerialExecutor())
        for r in range(args.reps):
            if args.only == "direct_1t":
                time_direct_serial(n, 1)
            else:
                time_hemaflow(cells, tmp / f"o{r}", SerialExecutor())
        return

    direct_one(0)  # warm up imports and the extractor in this process (forked workers inherit it)
    time_hemaflow(CellSet(cells.path, table.iloc[:2], cells.meta), tmp / "warm", SerialExecutor())

    # name -> (wall s, cpu s of this process and its pool workers); CPU time is disturbed far less
    # than wall time by the other processes of a shared machine
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in (
        "direct_default", "direct_1t", "hemaflow", "pool_default", "pool_1t", "hemaflow_par")}
    agree = None
    for r in range(args.rounds):
        t, c, ref = time_direct_serial(n, 0)
        res["direct_default"].append((t, c))
        t, c, _ = time_direct_serial(n, 1)
        res["direct_1t"].append((t, c))
        t, c, hf = time_hemaflow(cells, tmp / f"s{r}", SerialExecutor())
        res["hemaflow"].append((t, c))
        res["pool_default"].append(time_direct_pool(n, args.workers, 0))
        res["pool_1t"].append(time_direct_pool(n, args.workers, 1))
        t, c, hfp = time_hemaflow(cells, tmp / f"p{r}", ProcessExecutor(workers=args.workers, chunksize=1,
                                                                        start_method="fork"))
        res["hemaflow_par"].append((t, c))
        if agree is None:
            cols = ["radiomics_" + k for k in ref[0]]
            want = np.array([[d[k] for k in ref[0]] for d in ref])
            agree = float(np.nanmax(np.abs(hf[cols].to_numpy() - want)))
            pd.testing.assert_frame_equal(hf, hfp)
        print(f"round {r}: " + ", ".join(f"{k} {v[-1][0] / n * 1e3:.1f}" for k, v in res.items()) + " ms/cell",
              flush=True)

    wall = {k: min(w for w, _ in v) for k, v in res.items()}
    cpu = {k: min(c for _, c in v) for k, v in res.items()}
    ms = {k: v / n * 1e3 for k, v in wall.items()}
    print(f"\n{n} cells, {args.size}x{args.size} px, 7 classes ({len(hf.columns) - 4} features), best of "
          f"{args.rounds} rounds; max |hemaflow - pyradiomics| = {agree:.3g}")
    print("variant                                   wall ms/cell   cpu ms/cell (process + workers)")
    for k, label in (("direct_default", "pyradiomics loop (SimpleITK default threads)"),
                     ("direct_1t", "pyradiomics loop (SimpleITK 1 thread)"),
                     ("hemaflow", "hemaflow serial (itk_threads 1)")):
        print(f"{label:45s} {ms[k]:8.2f}     {cpu[k] / n * 1e3:8.2f}")
    print(f"engine overhead vs the like-for-like loop: wall {wall['hemaflow'] / wall['direct_1t'] - 1:+.1%}, "
          f"cpu {cpu['hemaflow'] / cpu['direct_1t'] - 1:+.1%} (target <= +5%); vs the default loop: wall "
          f"{wall['hemaflow'] / wall['direct_default'] - 1:+.1%}")
    for k, label, base in (("pool_default", f"Pool({args.workers}) (SimpleITK default threads)", "direct_default"),
                           ("pool_1t", f"Pool({args.workers}) (SimpleITK 1 thread)", "direct_1t"),
                           ("hemaflow_par", f"hemaflow processes x{args.workers}", "hemaflow")):
        print(f"{label:45s} {ms[k]:8.2f}     {cpu[k] / n * 1e3:8.2f}   speedup {wall[base] / wall[k]:.2f}x "
              "over its serial")
    print(f"hemaflow {args.workers} workers vs Pool({args.workers}), same crops and threads: Pool time / hemaflow "
          f"time = {wall['pool_1t'] / wall['hemaflow_par']:.3f}; speedup ratio "
          f"{(wall['hemaflow'] / wall['hemaflow_par']) / (wall['direct_1t'] / wall['pool_1t']):.3f} (target >= 0.95)")


if __name__ == "__main__":
    import atexit
    import shutil

    atexit.register(lambda: [shutil.rmtree(p, ignore_errors=True)
                             for p in Path(tempfile.gettempdir()).glob(f"bench_radiomics_*{os.getpid()}")])
    main()
