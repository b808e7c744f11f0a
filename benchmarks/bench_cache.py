"""What checking cache entries costs: a bare ``step.json`` read (the lookup before entries were
checked) against the cheap check every cache hit runs and the full hash of ``hemaflow cache verify``.

Usage::

    HEMAFLOW_CACHE_DIR=/tmp/c hemaflow run recipes/mil_multimodal.yaml   # fill a cache once
    python benchmarks/bench_cache.py --cache-dir /tmp/c

Times are medians over repetitions, for all entries of the cache together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from hemaflow.core.cache import StepCache, default_cache_dir


def median_ms(fn, keys: list[str], n: int) -> float:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        for k in keys:
            fn(k)
        out.append(time.perf_counter() - t0)
    return statistics.median(out) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    cache = StepCache(args.cache_dir or default_cache_dir())
    entries = list(cache.entries())
    keys = [e.key for e in entries]
    if not keys:
        raise SystemExit(f"no entries in {cache.root}: run a recipe with HEMAFLOW_CACHE_DIR={cache.root} first")
    files = sum(len((e.info or {}).get("manifest") or []) for e in entries)
    print(f"{len(keys)} entries, {files} files, {sum(e.size for e in entries) / 1e6:.1f} MB in {cache.root}")

    def bare(k: str) -> None:
        json.loads((cache.entry(k) / "step.json").read_text())

    print(f"step.json read only (no check):   {median_ms(bare, keys, args.repeat):8.1f} ms")
    print(f"cheap check (every cache hit):    {median_ms(cache.lookup_info, keys, args.repeat):8.1f} ms")
    print(f"full hash (hemaflow cache verify): {median_ms(lambda k: cache.check(k, full=True), keys, 3):7.1f} ms")


if __name__ == "__main__":
    main()
