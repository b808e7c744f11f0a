"""Classical white-cell segmentation per source, side by side (issue 13, items 1 and 5).

Rows, on every source of ``../shared/data`` (see ``bench_segment_sources.py`` for sources and
scoring: whole field for BCCD, centre cell for the wbc-crops crops):

* ``classical threshold`` — the algorithm before version 3 (``algorithm: threshold``, defaults);
* ``classical adaptive v3`` — the adaptive algorithm without the convex hull (``convex: false``);
* ``classical adaptive`` — the default (``algorithm: adaptive``; ``single_cell: true`` on crops);
* ``classical adaptive, nucleus_split`` — the default plus ``nucleus_split: true`` (purple
  cytoplasm dropped from the nucleus; chosen on dev among per-cell L*/b*/hematoxylin splits);
* optionally a learned model (``--weights wbc-v1``) in the same run.

How the adaptive defaults were chosen (no test image looked at): a small grid over
``background_distance`` x ``window`` x ``ring`` scored on *dev* images only (the first 40 of BCCD
``val`` and of the odd-numbered crops of each wbc-crops source), keeping the setting with the
best worst source. ``--split heldout`` scores only images that played no part in that choice
(BCCD ``test``, the even-numbered crops); ``--loso`` re-runs the grid leave one source out: defaults picked on two
sources' dev images, scored on the third's held-out images.

Usage::

    python benchmarks/bench_segment_classical.py                        # all images
    python benchmarks/bench_segment_classical.py --split heldout --weights wbc-v1
    python benchmarks/bench_segment_classical.py --loso
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_segment_sources import (CROP_SOURCES, load_source, model_segment, print_table,  # noqa: E402
                                   score_source, summarize)

from hemaflow.plugins.segment.adaptive import ADAPTIVE_DEFAULTS, adaptive_mask  # noqa: E402
from hemaflow.plugins.segment.classical import classical_mask  # noqa: E402

SOURCES = ("bccd", "tecom", "cellavision")
GRID = {"background_distance": (2.0, 3.0, 4.0), "window": (3.0, 4.5, 6.0), "ring": (0.15, 0.25)}


def items(source: str, split: str, limit: int | None = None) -> list:
    """Images of a source for ``split``: all, dev (used to choose defaults: odd-numbered crops) or
    heldout (never: even-numbered crops, BCCD test)."""
    if source == "bccd":
        return load_source({"all": "bccd-test", "heldout": "bccd-test", "dev": "bccd-val"}[split], limit)
    rows = load_source(source)
    if split != "all":
        rows = [r for r in rows if int(r[0]) % 2 == (1 if split == "dev" else 0)]
    return rows[:limit]


def adaptive(crops: bool, **params):
    return lambda img: adaptive_mask(img, single_cell=crops, **params)


def run(segmenters: dict, split: str, limit: int | None) -> dict[str, dict[str, dict]]:
    data = {s: items(s, split, limit) for s in SOURCES}
    out: dict[str, dict[str, dict]] = {}
    for name, make in segmenters.items():
        out[name] = {}
        for s in SOURCES:
            crops = s in CROP_SOURCES
            out[name][s] = summarize(score_source(make(crops), data[s], crops=crops))
            print(f"  {name} / {s}: cell {out[name][s]['cell_dice_mean']:.3f}", file=sys.stderr, flush=True)
    return out


def loso(limit: int | None) -> None:
    """Leave one source out: the grid's best worst-of-two on dev images, scored on the third's held-out."""
    dev = {s: items(s, "dev", limit) for s in SOURCES}
    held = {s: items(s, "heldout", limit) for s in SOURCES}
    settings = [dict(zip(GRID, v)) for v in itertools.product(*GRID.values())]
    dev_score = {}
    for i, st in enumerate(settings):
        dev_score[i] = {s: summarize(score_source(adaptive(s in CROP_SOURCES, **st), dev[s],
                                                  crops=s in CROP_SOURCES))["cell_dice_mean"] for s in SOURCES}
        print(f"  {st}: " + " ".join(f"{s} {v:.3f}" for s, v in dev_score[i].items()), file=sys.stderr, flush=True)
    print("| held-out source | chosen on | setting | dev worst-of-two | held-out cell Dice | defaults' held-out |")
    print("|---|---|---|---|---|---|")
    for target in SOURCES:
        others = [s for s in SOURCES if s != target]
        best = max(dev_score, key=lambda i: min(dev_score[i][s] for s in others))
        crops = target in CROP_SOURCES
        got = summarize(score_source(adaptive(crops, **settings[best]), held[target], crops=crops))
        ref = summarize(score_source(adaptive(crops), held[target], crops=crops))
        print(f"| {target} | {' + '.join(others)} | {settings[best]} | "
              f"{min(dev_score[best][s] for s in others):.3f} | {got['cell_dice_mean']:.3f} | "
              f"{ref['cell_dice_mean']:.3f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=["all", "dev", "heldout"], default="all")
    ap.add_argument("--limit", type=int, default=None, help="first N images per source (quick checks)")
    ap.add_argument("--weights", default=None, help="also score this learned model (shipped name or path)")
    ap.add_argument("--loso", action="store_true", help="leave-one-source-out choice of the adaptive defaults")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    if a.loso:
        loso(a.limit)
        return
    segs = {"classical threshold (v2 defaults)": lambda crops: classical_mask,
            "classical adaptive v3 (convex: false)": lambda crops: adaptive(crops, convex=False),
            "classical adaptive (defaults)": adaptive,
            "classical adaptive, nucleus_split: true": lambda crops: adaptive(crops, nucleus_split=True)}
    if a.weights:
        seg, meta = model_segment(a.weights)
        segs[f"{Path(a.weights).stem} ({meta.get('architecture')}-{meta.get('encoder')})"] = lambda crops: seg
    res = run(segs, a.split, a.limit)
    print(f"split: {a.split}; adaptive defaults {ADAPTIVE_DEFAULTS}")
    print_table(res)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
