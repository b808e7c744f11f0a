"""Engine overhead per step: an empty step, a cache hit, an artifact write.

Runs a chain of N steps whose component does nothing but pass a tiny Metrics artifact on,
through the real runner (validation excluded), with a fresh cache and then again fully cached.
The component's own work is ~0, so the time per step is the engine's overhead: work directory,
cache key, outputs check, atomic commit, reload of the outputs, provenance bookkeeping.

    python benchmarks/bench_engine.py [--steps 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hemaflow import hookimpl
from hemaflow.core.artifacts import Metrics, TableArtifact
from hemaflow.core.component import Component
from hemaflow.core.plugins import build_registry, make_plugin_manager
from hemaflow.core.recipe import Recipe
from hemaflow.core.runner import Runner
from hemaflow.core.validate import resolve


class Passthrough(Component):
    """Does nothing: measures what the engine adds around a step."""

    kind = "evaluator"
    name = "bench_passthrough"
    schema = {"type": "object", "properties": {"i": {"type": "integer", "default": 0}}, "additionalProperties": False}
    inputs = {"previous": "Metrics?"}
    outputs = {"metrics": "Metrics"}

    def run(self, ctx, previous=None):
        return {"metrics": Metrics(ctx.out_dir("metrics"), {"bench": {"i": self.params["i"]}}).save()}


class BenchPlugin:
    @hookimpl
    def register_evaluators(self, register):
        register(Passthrough)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    registry = build_registry(make_plugin_manager(entry_points=False, extra=[BenchPlugin()]))
    steps = {}
    for i in range(args.steps):
        steps[f"s{i}"] = {"uses": "bench_passthrough", "with": {"i": i}}
        if i:
            steps[f"s{i}"]["inputs"] = {"previous": f"s{i - 1}"}
    data = {"name": "bench", "device": "cpu", "steps": steps, "report": {"uses": "html"}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        resolved = resolve(Recipe(path=tmp / "bench.yaml", data=data), registry)

        def timed_run(out: str) -> tuple[float, list[float]]:
            runner = Runner(resolved, registry, cache_dir=tmp / "cache")
            t0 = time.perf_counter()
            results = {}
            for spec in resolved.steps:  # the runner's own per-step path, without the report
                t = time.perf_counter()
                results[spec.id] = runner._run_step(spec, results)
                results[spec.id].wall = time.perf_counter() - t  # type: ignore[attr-defined]
            total = time.perf_counter() - t0
            return total, [r.wall for r in results.values()]  # type: ignore[attr-defined]

        total_ran, per_ran = timed_run("a")
        total_hit, per_hit = timed_run("b")

        direct = []
        for i in range(args.steps):
            t = time.perf_counter()
            Metrics(tmp / "direct" / f"m{i}", {"bench": {"i": i}}).save()
            direct.append(time.perf_counter() - t)

        table = pd.DataFrame({"id": [f"c{i}" for i in range(10_000)], "x": np.random.rand(10_000)})
        writes = []
        for i in range(20):
            t = time.perf_counter()
            TableArtifact(tmp / "tables" / f"t{i}", table).save()
            writes.append(time.perf_counter() - t)

    ms = lambda xs: 1000 * float(np.median(xs))  # noqa: E731
    print(f"steps: {args.steps}  (python {sys.version.split()[0]})")
    print(f"empty step, run (work dir, key, commit, reload): median {ms(per_ran):6.2f} ms/step; total {total_ran:.2f} s")
    print(f"empty step, cache hit (key, lookup, reload):     median {ms(per_hit):6.2f} ms/step; total {total_hit:.2f} s")
    print(f"the component's own work (Metrics save, direct):  median {ms(direct):6.2f} ms/step")
    print(f"engine overhead per run step: {ms(per_ran) - ms(direct):6.2f} ms; per cache hit: {ms(per_hit):6.2f} ms")
    print(f"TableArtifact write, 10,000 rows (parquet + meta): median {ms(writes):6.2f} ms")


if __name__ == "__main__":
    main()
