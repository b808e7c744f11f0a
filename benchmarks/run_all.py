"""hemaflow's benchmark suite in one command: one table, one JSON file (issue 17).

Run:  python benchmarks/run_all.py --quick      (about 5 minutes on 2 cores)
      python benchmarks/run_all.py              (larger sizes, and 100k cells)
      python benchmarks/run_all.py --only chain,executors --json /tmp/bench.json

Sections (each runs in its own Python process, so its imports and its peak RSS are its own):

* ``chain``: the per-image chain synthetic smears -> macenko -> classical -> morphology ->
  cell_crops -> cell_features through the real Runner (serial executor, fresh cache): per step,
  seconds, output rows per second and the peak RSS of the process while the step ran; on the
  built-in synthetic fields and on the real BCCD fields of ``../shared/data`` (read in place).
  Then the same recipe rerun fully cached as its own ``hemaflow run`` process, and
  ``hemaflow validate`` as its own process: the cached-rerun share is cached / fresh wall time.
* ``engine``: ``bench_segment.py throughput`` (real BCCD fields, 1 torch thread): the components'
  time over a plain loop calling the same library functions.
* ``fused``: ``bench_chain.py`` (synthetic arrays, 3 per-image steps): the Runner's whole run
  (less the source step) with the chain fused and unfused, over a plain loop writing the same files.
* ``executors``: the classical segmentation worker over the same fields with ``serial``,
  ``processes`` (2 workers), ``dask`` (a local cluster of 2 workers, cold = including starting
  it, warm = a second map on it) and a plain ``multiprocessing.Pool(2).map``: speedups over
  serial, and each executor's speedup as a share of Pool(2)'s.
* ``single_cells``: read + centre-cell segmentation + crop of the real CellaVision crops
  (300 px), crops per CPU-second (per core) of the worker in a plain loop.
* ``cells_rss``: peak RSS and seconds of the per-cell ``cell_features`` step (serial) on CellSets
  of 1k, 5k, 20k (and 100k without ``--quick``) cells, tiled from the crops of the chain (the
  real fields' when present); ``--quick`` computes the shape and colour groups only.

Peak RSS is sampled every 10 ms (``psutil``: the process plus its worker processes), so a peak
shorter than that can be missed. "anon" is RSS minus shared pages: crops read through a memory
map count in RSS while they stay cached, but the kernel can drop them at any time. Wall times on a shared machine move with its load; ratios
measured in one process (engine, executors) are the stable numbers. The load average is
recorded with each section.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SHARED = ROOT.parent / "shared" / "data"
PY = sys.executable


# -- measuring -------------------------------------------------------------------------------------
class PeakRSS:
    """Peak resident memory (MB) of this process and its children while the block runs."""

    def __init__(self, interval: float = 0.01) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = 0.0  # resident set: includes file pages read through memory maps
        self.peak_anon = 0.0  # resident minus shared (file-backed) pages: what the step itself holds
        self._stop = threading.Event()

    def _rss(self) -> tuple[float, float]:
        total = anon = 0
        try:
            procs = [self._proc, *self._proc.children(recursive=True)]
        except Exception:
            procs = [self._proc]
        for proc in procs:
            try:
                mi = proc.memory_info()
            except Exception:  # a worker that just exited
                continue
            total += mi.rss
            anon += mi.rss - getattr(mi, "shared", 0)
        return total / 2**20, anon / 2**20

    def _sample(self) -> None:
        rss, anon = self._rss()
        self.peak, self.peak_anon = max(self.peak, rss), max(self.peak_anon, anon)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak = self.peak_anon = 0.0
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def load() -> float:
    return round(os.getloadavg()[0], 1)


def timed_process(cmd: list[str], env: dict[str, str] | None = None, timeout: int = 1800) -> tuple[float, int, str]:
    """Wall seconds of a command as its own process, its exit code and the end of its output."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - t0, res.returncode, (res.stdout + res.stderr)[-2000:]


def section_process(name: str, params: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one section in a fresh Python process; its result is the last ``RESULT`` line."""
    t0 = time.perf_counter()
    res = subprocess.run([PY, str(Path(__file__)), "--section", name, "--params", json.dumps(params)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode != 0 or not lines:
        return {"error": f"exit {res.returncode}: {(res.stderr or res.stdout)[-1500:]}", "process_seconds": wall}
    out = json.loads(lines[-1][len("RESULT "):])
    out["process_seconds"] = round(wall, 2)
    return out


# -- sections (each runs in its own process) -------------------------------------------------------
def chain_recipe(source: str, n: int) -> str:
    if source == "synthetic":
        per_patient = max(1, n // 10)
        data = f"""  data:
    uses: synthetic_smears
    with: {{patients_per_class: 2, images_per_patient: {per_patient}, image_size: 256}}"""
    else:
        data = f"""  data:
    uses: bccd_fields
    with: {{path: {SHARED / 'bccd-fields'}, limit: {max(1, n // 3)}}}"""
    return f"""name: bench_chain_{source}
seed: 0
device: cpu
steps:
{data}
  normalize:
    uses: macenko
    inputs: {{images: data}}
  segment:
    uses: classical
    inputs: {{images: normalize}}
  postprocess:
    uses: morphology
    inputs: {{masks: segment}}
  cells:
    uses: cell_crops
    inputs: {{images: normalize, masks: postprocess}}
    with: {{crop_size: 64}}
  features:
    uses: cell_features
    inputs: {{cells: cells}}
"""


def run_chain(p: dict[str, Any]) -> dict[str, Any]:
    """The chain in this process through the real Runner, per-step peak RSS sampled."""
    from hemaflow.core.plugins import get_registry
    from hemaflow.core.recipe import load_recipe
    from hemaflow.core.runner import Runner
    from hemaflow.core.validate import resolve

    registry = get_registry()
    resolved = resolve(load_recipe(p["recipe"], []), registry)
    rows: list[dict[str, Any]] = []

    class MeasuredRunner(Runner):
        def _run_step(self, spec, results):  # type: ignore[override]
            with PeakRSS() as rss:
                res = super()._run_step(spec, results)
            first = next(iter(res.outputs.values()), None)
            table = getattr(first, "table", None)
            n = len(table) if table is not None else None
            rows.append({"step": spec.id, "component": spec.uses, "seconds": round(res.seconds, 3),
                         "rows": n, "rows_per_s": round(n / res.seconds, 2) if n and res.seconds > 0 else None,
                         "peak_rss_mb": round(rss.peak), "peak_anon_mb": round(rss.peak_anon),
                         "cached": res.cached})
            return res

    t0 = time.perf_counter()
    MeasuredRunner(resolved, registry, cache_dir=Path(p["cache"]), console=None).run(Path(p["out"]))
    return {"steps": rows, "run_seconds": round(time.perf_counter() - t0, 2), "load": load()}


def run_engine(p: dict[str, Any]) -> dict[str, Any]:
    sys.path.insert(0, str(BENCH))
    import bench_segment

    args = argparse.Namespace(n=p["n"], threads=1)
    res = bench_segment.bench_throughput(args)
    return {"n_images": res["n_images"],
            "plain_images_per_s": round(max(res["plain"]["images_per_s"], res["plain_again"]["images_per_s"]), 2),
            "components_images_per_s": round(max(res["components"]["images_per_s"],
                                                 res["components_again"]["images_per_s"]), 2),
            "ratio_components_to_plain": round(res["ratio_components_to_plain"], 3), "load": load()}


def run_executors(p: dict[str, Any]) -> dict[str, Any]:
    """The classical worker over the same fields: serial, processes, dask, Pool(2)."""
    import multiprocessing as mp

    from hemaflow.plugins.datasets import SyntheticSmears
    from hemaflow.plugins.executors import DaskExecutor, ProcessExecutor, SerialExecutor
    from hemaflow.plugins.segment import ClassicalSegmenter
    from hemaflow.plugins.segment.classical import _classical_one
    from hemaflow.plugins.segment.common import mask_file_name
    from hemaflow.testing import make, make_context

    work = Path(p["work"])
    images = make(SyntheticSmears, patients_per_class=2, images_per_patient=max(1, p["n"] // 10),
                  image_size=p["size"]).run(make_context(work / "data"))["images"]
    seg = make(ClassicalSegmenter)
    (work / "masks").mkdir(parents=True, exist_ok=True)
    items = [(str(r["image_id"]), str(images.image_path(r)), str(work / mask_file_name(i)), seg.seg_params())
             for i, r in images.table.reset_index(drop=True).iterrows()]
    _classical_one(items[0])  # imports outside the timings
    workers = p["workers"]
    times: dict[str, float] = {}
    results: dict[str, Any] = {}

    def clock(name: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        results[name] = fn()
        times[name] = time.perf_counter() - t0

    def pool() -> list:
        with mp.get_context("fork").Pool(workers) as pl:
            return pl.map(_classical_one, items)

    dask = DaskExecutor(workers=workers, chunksize=0, address=None, connect_timeout=60)
    for rnd in range(p["rounds"]):  # interleaved rounds, best of each (a shared machine)
        for name, fn in (("serial", lambda: SerialExecutor().map(_classical_one, items)),
                         ("processes", lambda: ProcessExecutor(workers=workers, chunksize=1,
                                                               start_method="fork").map(_classical_one, items)),
                         ("pool", pool),
                         ("dask_warm" if rnd or dask._client is not None else "dask_cold",
                          lambda: dask.map(_classical_one, items))):
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
            times[name] = min(times.get(name, dt), dt)
            results[name] = out
        if "dask_warm" not in times:
            t0 = time.perf_counter()
            results["dask_warm"] = dask.map(_classical_one, items)
            times["dask_warm"] = time.perf_counter() - t0
    dask.close()
    ref = [r["cell_fraction"] for r in results["serial"]]
    same = {k: [r["cell_fraction"] for r in v] == ref for k, v in results.items()}
    speed = {k: times["serial"] / v for k, v in times.items()}
    return {"n_items": len(items), "size": p["size"], "workers": workers,
            "seconds": {k: round(v, 3) for k, v in times.items()},
            "speedup_over_serial": {k: round(v, 3) for k, v in speed.items()},
            "share_of_pool_speedup": {k: round(speed[k] / speed["pool"], 3) for k in speed if k != "serial"},
            "results_identical_to_serial": same, "load": load()}


def run_single_cells(p: dict[str, Any]) -> dict[str, Any]:
    from hemaflow.plugins.single_cells import SingleCells, single_cell_item
    from hemaflow.testing import defaults

    files = sorted((SHARED / "wbc-crops" / "cellavision").glob("*.bmp"))[: p["n"]]
    params = defaults(SingleCells)
    single_cell_item((str(files[0]), None, None, 1.0, params))
    t, c = time.perf_counter(), time.process_time()
    kept = sum("crop" in single_cell_item((str(f), None, None, 1.0, params)) for f in files)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return {"n_images": len(files), "kept": kept, "crops_per_s_wall": round(len(files) / wall, 1),
            "crops_per_cpu_s": round(len(files) / cpu, 1), "load": load()}


def run_cells_rss(p: dict[str, Any]) -> dict[str, Any]:
    """``cell_features`` on a CellSet of ``n`` cells tiled from the crops of a real CellSet."""
    import numpy as np

    from hemaflow.plugins.artifacts import CellSet
    from hemaflow.plugins.handcrafted import CellFeatures
    from hemaflow.testing import make, make_context

    src = CellSet.load(Path(p["cells"]))
    n, work = p["n"], Path(p["work"])
    base_t = src.table.reset_index(drop=True)
    reps = -(-n // len(base_t))
    idx = np.tile(np.arange(len(base_t)), reps)[:n]
    out = work / "cells"
    out.mkdir(parents=True, exist_ok=True)
    crops, masks = src.crops, src.crop_masks
    c = np.lib.format.open_memmap(out / "crops.npy", mode="w+", dtype=np.uint8, shape=(n, *crops.shape[1:]))
    m = np.lib.format.open_memmap(out / "crop_masks.npy", mode="w+", dtype=np.uint8, shape=(n, *masks.shape[1:]))
    for s in range(0, n, 4096):  # written in blocks: the set is never whole in memory here
        c[s:s + 4096] = crops[idx[s:s + 4096]]
        m[s:s + 4096] = masks[idx[s:s + 4096]]
    c.flush()
    m.flush()
    del c, m
    table = base_t.iloc[idx].reset_index(drop=True)
    table["cell_id"] = [f"{iid}:t{k}" for k, iid in enumerate(table["image_id"])]
    table["crop_index"] = np.arange(n)
    cells = CellSet(out, table, dict(src.meta)).save()
    cells = CellSet.load(out)
    import gc

    gc.collect()
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        feats = make(CellFeatures, groups=p["groups"]).run(make_context(work / "features"), cells=cells)["features"]
        secs = time.perf_counter() - t0
    return {"n_cells": n, "seconds": round(secs, 2), "cells_per_s": round(n / secs, 1),
            "peak_rss_mb": round(rss.peak), "peak_anon_mb": round(rss.peak_anon), "groups": p["groups"],
            "rows": len(feats.table), "load": load()}


def run_fused(p: dict[str, Any]) -> dict[str, Any]:
    """bench_chain.py: a per-image chain through the Runner fused and unfused, over a plain loop."""
    sys.path.insert(0, str(BENCH))
    import bench_chain

    return dict(bench_chain.bench(p["n"], p["size"], p["repeat"]), load=load())


SECTIONS = {"chain": run_chain, "engine": run_engine, "fused": run_fused, "executors": run_executors,
            "single_cells": run_single_cells, "cells_rss": run_cells_rss}


# -- the suite -------------------------------------------------------------------------------------
def suite(args: argparse.Namespace) -> dict[str, Any]:
    quick = args.quick
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    work = Path(tempfile.mkdtemp(prefix="hemaflow-bench-"))
    env = dict(os.environ, HEMAFLOW_CACHE_DIR=str(work / "cache"))
    report: dict[str, Any] = {"quick": quick, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                              "cpus": os.cpu_count(), "notes": []}
    real = (SHARED / "bccd-fields").is_dir()
    if not real:
        report["notes"].append(f"{SHARED} not found: the real-image rows are skipped")
    cells_dir: Path | None = None
    try:
        if "chain" in only:
            report["chain"] = {}
            for source in ("synthetic", "real"):
                if source == "real" and not real:
                    continue
                n = (20 if quick else 80) if source == "synthetic" else (6 if quick else 60)
                recipe = work / f"chain_{source}.yaml"
                recipe.write_text(chain_recipe(source, n))
                print(f"== chain on {source} fields ...", flush=True)
                res = section_process("chain", {"recipe": str(recipe), "cache": str(work / "cache"),
                                                "out": str(work / f"run_{source}")}, env)
                if "error" not in res:
                    cached, code, tail = timed_process([PY, "-m", "hemaflow", "run", str(recipe), "--out",
                                                        str(work / f"run_{source}_cached")], env)
                    val, vcode, _ = timed_process([PY, "-m", "hemaflow", "validate", str(recipe)], env)
                    res["fresh_process_seconds"] = res["process_seconds"]
                    res["cached_rerun_process_seconds"] = round(cached, 2) if code == 0 else f"failed: {tail}"
                    res["validate_process_seconds"] = round(val, 2) if vcode == 0 else "failed"
                    if code == 0:
                        res["cached_rerun_share"] = round(cached / res["process_seconds"], 3)
                    steps = {s["step"]: s for s in res["steps"]}
                    if source == "real" or cells_dir is None:
                        prov = json.loads((work / f"run_{source}" / "provenance.json").read_text())
                        entry = {s["id"]: s for s in prov["steps"]}["cells"]["cache_key"]
                        cells_dir = work / "cache" / "steps" / entry[:2] / entry / "cells"
                    res["steps"] = list(steps.values())
                report["chain"][source] = res
        if "engine" in only:
            if real:
                print("== engine / plain loop ...", flush=True)
                report["engine"] = section_process("engine", {"n": 10 if quick else 40}, env)
            else:
                report["engine"] = {"skipped": "needs the real BCCD fields"}
        if "fused" in only:
            print("== fused per-image chain / plain loop ...", flush=True)
            report["fused"] = section_process("fused", {"n": 10 if quick else 40, "size": 256 if quick else 512,
                                                        "repeat": 2 if quick else 3}, env)
        if "executors" in only:
            print("== executors ...", flush=True)
            report["executors"] = section_process("executors", {
                "work": str(work / "executors"), "n": 30 if quick else 80, "size": 256, "workers": 2,
                "rounds": 2 if quick else 3}, env)
        if "single_cells" in only:
            if (SHARED / "wbc-crops" / "cellavision").is_dir():
                print("== single cells ...", flush=True)
                report["single_cells"] = section_process("single_cells", {"n": 40 if quick else 100}, env)
            else:
                report["single_cells"] = {"skipped": "needs ../shared/data/wbc-crops"}
        if "cells_rss" in only:
            if cells_dir is None or not cells_dir.is_dir():
                recipe = work / "chain_cells.yaml"
                recipe.write_text(chain_recipe("synthetic", 10).split("  features:")[0])
                section_process("chain", {"recipe": str(recipe), "cache": str(work / "cache"),
                                          "out": str(work / "run_cells")}, env)
                prov = json.loads((work / "run_cells" / "provenance.json").read_text())
                key = {s["id"]: s for s in prov["steps"]}["cells"]["cache_key"]
                cells_dir = work / "cache" / "steps" / key[:2] / key / "cells"
            sizes = args.cells or ([1000, 5000, 20000] + ([] if quick else [100000]))
            report["cells_rss"] = []
            for n in sizes:
                print(f"== cell_features on {n} cells ...", flush=True)
                sub = work / f"cells_{n}"
                groups = ["shape", "colour"] if quick else ["shape", "colour", "texture"]
                report["cells_rss"].append(section_process("cells_rss", {"cells": str(cells_dir), "n": n,
                                                                         "work": str(sub), "groups": groups}, env))
                shutil.rmtree(sub, ignore_errors=True)
            if quick and not args.cells:
                report["notes"].append("cells_rss in --quick: shape and colour features only (texture is most of "
                                       "the time); 100k cells not run (about 5x the 20k row): run without --quick")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report["seconds"] = round(time.perf_counter() - T0, 1)
    return report


def table(report: dict[str, Any]) -> str:
    """The report as one plain-text table: section, row, measurement, value."""
    rows: list[tuple[str, str, str, str]] = []

    def add(sec: str, row: str, what: str, value: Any) -> None:
        rows.append((sec, row, what, "" if value is None else str(value)))

    for source, res in (report.get("chain") or {}).items():
        if "error" in res:
            add(f"chain {source}", "-", "error", res["error"].splitlines()[-1][:80])
            continue
        for s in res["steps"]:
            add(f"chain {source}", f"{s['step']} ({s['component']})", "rows/s | s | peak RSS (anon) MB",
                f"{s['rows_per_s']} | {s['seconds']} | {s['peak_rss_mb']} ({s['peak_anon_mb']})")
        add(f"chain {source}", "whole run", "fresh s (own process)", res.get("fresh_process_seconds"))
        add(f"chain {source}", "whole run", "cached rerun s (own process)", res.get("cached_rerun_process_seconds"))
        add(f"chain {source}", "whole run", "cached-rerun share", res.get("cached_rerun_share"))
        add(f"chain {source}", "validate", "s (own process)", res.get("validate_process_seconds"))
    eng = report.get("engine")
    if eng:
        if "ratio_components_to_plain" in eng:
            add("engine", f"{eng['n_images']} BCCD fields", "components / plain loop", eng["ratio_components_to_plain"])
            add("engine", "", "images/s plain | components",
                f"{eng['plain_images_per_s']} | {eng['components_images_per_s']}")
        else:
            add("engine", "-", "skipped/error", eng.get("skipped") or eng.get("error", "")[-80:])
    fu = report.get("fused")
    if fu:
        if "ratio_fused_to_plain" in fu:
            row = f"{fu['n_images']} x {fu['size']} px, 3 steps"
            add("fused chain", row, "fused run / plain loop", fu["ratio_fused_to_plain"])
            add("fused chain", "", "unfused run / plain loop", fu["ratio_unfused_to_plain"])
            add("fused chain", "", "s plain | fused | unfused", f"{fu['plain_s']} | {fu['fused_s']} | {fu['unfused_s']}")
        else:
            add("fused chain", "-", "error", fu.get("error", "")[-80:])
    ex = report.get("executors")
    if ex:
        if "seconds" in ex:
            for k, v in ex["seconds"].items():
                add("executors", f"{k} ({ex['n_items']} fields {ex['size']} px)", "s | speedup | share of Pool(2)",
                    f"{v} | {ex['speedup_over_serial'][k]} | {ex['share_of_pool_speedup'].get(k, '-')}")
            add("executors", "results identical to serial", "", all(ex["results_identical_to_serial"].values()))
        else:
            add("executors", "-", "error", ex.get("error", "")[-80:])
    sc = report.get("single_cells")
    if sc:
        if "crops_per_cpu_s" in sc:
            add("single_cells", f"{sc['n_images']} CellaVision crops", "crops per CPU-s | per wall-s",
                f"{sc['crops_per_cpu_s']} | {sc['crops_per_s_wall']}")
        else:
            add("single_cells", "-", "skipped/error", sc.get("skipped") or sc.get("error", "")[-80:])
    for r in report.get("cells_rss") or []:
        if "peak_rss_mb" in r:
            add("cells_rss", f"cell_features, {r['n_cells']} cells", "peak RSS (anon) MB | s | cells/s",
                f"{r['peak_rss_mb']} ({r['peak_anon_mb']}) | {r['seconds']} | {r['cells_per_s']}")
        else:
            add("cells_rss", "-", "error", r.get("error", "")[-80:])
    w = [max(len(r[i]) for r in rows + [("section", "row", "measurement", "value")]) for i in range(4)]
    lines = ["  ".join(h.ljust(w[i]) for i, h in enumerate(("section", "row", "measurement", "value")))]
    lines.append("  ".join("-" * x for x in w))
    lines += ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines += [f"note: {n}" for n in report.get("notes", [])]
    lines.append(f"total {report.get('seconds')} s, {report.get('cpus')} CPUs, load at the end {load()}")
    return "\n".join(lines)


T0 = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, one round, no 100k cells (~5 min)")
    ap.add_argument("--only", default="", help=f"comma-separated sections: {','.join(SECTIONS)}")
    ap.add_argument("--json", type=Path, default=Path("/tmp/hemaflow-bench.json"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder (cache, runs)")
    ap.add_argument("--cells", type=lambda v: [int(x) for x in v.split(",")], default=None,
                    help="cells_rss: comma-separated cell counts (default 1000,5000,20000 and 100000 without --quick)")
    ap.add_argument("--section", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.section:  # a child process: one section, one RESULT line
        sys.path.insert(0, str(ROOT))
        print("RESULT " + json.dumps(SECTIONS[args.section](json.loads(args.params)), default=str), flush=True)
        return
    report = suite(args)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(table(report))
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
