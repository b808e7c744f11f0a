"""Engine overhead of a fused per-image chain (hemaflow.core.chain) over a plain loop.

Three per-item steps (smooth -> threshold + label -> per-object areas, scipy.ndimage on
``--size`` px float images) after a source step, run three ways in one process, each
``--repeat`` times (best kept), each on a fresh cache:

* plain: a Python loop calling the same per-item functions and writing the same .npy files;
* fused: the real Runner with fusion on (one executor task per image for the whole chain);
* unfused: the real Runner with ``fuse=False`` (each step reads its input back from the cache).

The ratios are (wall time of the Runner's run, less the source step's time: cache keys,
commits, manifests, run directory, provenance and report included) / (plain loop time); the
``*_steps`` ratios count only the chain steps (the runner's calls that run them: keys, locks,
work, assemble, commit with manifests) over the same plain loop.
Serial executor, one thread. Run::

    python benchmarks/bench_chain.py --n 40 --size 512
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from hemaflow.core.artifacts import Artifact  # noqa: E402
from hemaflow.core.chain import PerItem  # noqa: E402
from hemaflow.core.component import Component  # noqa: E402


class BenchArrays(Artifact):
    type_name = "BenchArrays"

    def load_items(self) -> list[tuple[str, np.ndarray]]:
        return [(n, np.load(self.path / f"{n}.npy")) for n in self.meta["names"]]


def write_arrays(out: Path, results: list[Any]) -> BenchArrays:
    out.mkdir(parents=True, exist_ok=True)
    kept = [r for r in results if r is not None]
    for n, arr in kept:
        np.save(out / f"{n}.npy", arr)
    return BenchArrays(out, {"names": [n for n, _ in kept]}).save()


def smooth(arr: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(arr, 2.0).astype(np.float32)


def label(arr: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.label(arr > arr.mean())[0].astype(np.int32)


def areas(lab: np.ndarray) -> np.ndarray:
    return np.bincount(lab.ravel())[1:].astype(np.int64)


class BenchSource(Component):
    kind, name = "dataset", "bench_source"
    schema = {"type": "object", "properties": {"n": {"type": "integer", "default": 10},
                                               "size": {"type": "integer", "default": 256}},
              "additionalProperties": False}
    outputs = {"images": "BenchArrays"}

    def run(self, ctx, **_):
        rng = np.random.default_rng(0)
        s = self.params["size"]
        return {"images": write_arrays(ctx.out_dir("a"), [(f"im{i}", rng.random((s, s), dtype=np.float32))
                                                         for i in range(self.params["n"])])}


class _Step(PerItem, Component):
    fn: Any = None
    inputs = {"images": "BenchArrays"}
    outputs = {"images": "BenchArrays"}

    def items(self, ctx, images):
        return images.load_items()

    def run_item(self, item):
        n, arr = item
        return n, type(self).fn(arr)

    def assemble(self, ctx, results, images):
        return {"images": write_arrays(ctx.out_dir("a"), results)}


class BenchSmooth(_Step):
    kind, name, fn = "normalizer", "bench_smooth", staticmethod(smooth)


class BenchLabel(_Step):
    kind, name, fn = "segmenter", "bench_label", staticmethod(label)


class BenchAreas(_Step):
    kind, name, fn = "cells", "bench_areas", staticmethod(areas)


RECIPE = """name: bench_fused
seed: 0
steps:
  data: {{uses: bench_source, with: {{n: {n}, size: {size}}}}}
  smooth: {{uses: bench_smooth, inputs: {{images: data}}}}
  label: {{uses: bench_label, inputs: {{images: smooth}}}}
  areas: {{uses: bench_areas, inputs: {{images: label}}}}
"""


def registry():
    from hemaflow.core.plugins import Entry, build_registry, make_plugin_manager

    reg = build_registry(make_plugin_manager(entry_points=False))
    reg.artifact_types["BenchArrays"] = BenchArrays
    for cls in (BenchSource, BenchSmooth, BenchLabel, BenchAreas):
        reg.components[cls.kind][cls.name] = Entry(cls, "bench", "bench", "0")
    return reg


def plain_loop(images: BenchArrays, out: Path) -> float:
    t0 = time.perf_counter()
    res = {"smooth": [], "label": [], "areas": []}
    for n, arr in images.load_items():
        a = smooth(arr)
        b = label(a)
        c = areas(b)
        res["smooth"].append((n, a))
        res["label"].append((n, b))
        res["areas"].append((n, c))
    for step, rows in res.items():
        write_arrays(out / step, rows)
    return time.perf_counter() - t0


def bench(n: int, size: int, repeat: int) -> dict[str, Any]:
    from hemaflow.core.recipe import load_recipe
    from hemaflow.core.runner import Runner
    from hemaflow.core.validate import resolve

    best: dict[str, float] = {}
    spent: list[float] = []  # seconds in the chain steps' _run_chain / _run_step calls (commits included)

    def timed(fn):
        def wrapper(self, *a, **k):
            t0 = time.perf_counter()
            try:
                return fn(self, *a, **k)
            finally:
                if a and (getattr(a[0], "id", None) != "data"):
                    spent.append(time.perf_counter() - t0)
        return wrapper

    Runner._run_chain = timed(Runner._run_chain)
    Runner._run_step = timed(Runner._run_step)
    label(smooth(np.ones((8, 8), np.float32)))  # imports outside the timings
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as tmp:
        tmp_p = Path(tmp)
        path = tmp_p / "r.yaml"
        path.write_text(RECIPE.format(n=n, size=size))
        for rep in range(repeat):
            for mode in ("fused", "unfused"):
                reg = registry()
                runner = Runner(resolve(load_recipe(path), reg), reg, cache_dir=tmp_p / f"c-{mode}-{rep}",
                                fuse=(mode == "fused"))
                spent.clear()
                t0 = time.perf_counter()
                out = runner.run(tmp_p / f"run-{mode}-{rep}")
                chain_s = time.perf_counter() - t0 - out.steps[0].seconds  # the whole run but the source step
                if mode == "fused":
                    assert all(getattr(s, "fused", None) for s in out.steps[1:]), "the chain did not fuse"
                    images = out.steps[0].outputs["images"]
                best[mode] = min(best.get(mode, float("inf")), chain_s)
                best[mode + "_steps"] = min(best.get(mode + "_steps", float("inf")), sum(spent))
            best["plain"] = min(best.get("plain", float("inf")), plain_loop(images, tmp_p / f"plain-{rep}"))
    return {"n_images": n, "size": size, "repeat": repeat,
            "plain_s": round(best["plain"], 3), "fused_s": round(best["fused"], 3),
            "unfused_s": round(best["unfused"], 3),
            "ratio_fused_to_plain": round(best["fused"] / best["plain"], 3),
            "ratio_unfused_to_plain": round(best["unfused"] / best["plain"], 3),
            "fused_steps_s": round(best["fused_steps"], 3), "unfused_steps_s": round(best["unfused_steps"], 3),
            "ratio_fused_steps_to_plain": round(best["fused_steps"] / best["plain"], 3),
            "ratio_unfused_steps_to_plain": round(best["unfused_steps"] / best["plain"], 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    print(json.dumps(bench(args.n, args.size, args.repeat)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
