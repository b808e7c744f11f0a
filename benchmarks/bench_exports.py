"""The dev benchmark for per-cell exports: real cells, real shift (issue 14).

Pseudo-patients drawn from the real single-cell crops of ``../shared/data/wbc-crops`` (Tecom:
300 rapid-stained crops ~120 px; CellaVision: 100 standard-stained crops 300 px; Zheng et al.,
Micron 2018), one source per patient; trained on one source's patients and tested on the
other's, both directions, through the shipped recipes and the engine (``hemaflow.core``: the
recipes are loaded with ``--set``-style overrides, resolved and run by the Runner, exactly as
``hemaflow run`` does). The export is written to a temporary folder (symlinks, nothing copied
into the repository).

Run:  nice -n 5 python benchmarks/bench_exports.py [--out /tmp/bench_exports] [--json FILE]
      python benchmarks/bench_exports.py --quick        (8 patients per class, 1 epoch: a smoke test)

Patients (``benchmarks/wbc_pseudo_export.py``'s :func:`write_export`): per source
``--per-class`` POS and NEG patients of ``--bag`` cells; POS bags hold 10-30% monocytes
(``--minority``), NEG bags 0-5%, the rest neutrophils and lymphocytes in a per-patient mix that
carries no label. The labels CSV has ``cohort`` (the source) and ``um_per_px`` (below). The
CellaVision set is small (15 monocytes, 33 neutrophils, 37 lymphocytes): its bags repeat cells
within and across patients, so its patients are far less independent than their count suggests.

Scale: the two sources have very different pixel scales (median cell side ~77 px in Tecom,
~176 px in CellaVision). Per source, the centre cell of every image is segmented with the
pipeline's own segmenter (``single_cells``' adaptive mask, no labels, no ground-truth masks),
and its pixel size is set to ``CELL_UM / median cell side`` (a nominal 12 um white cell): the
``um_per_px`` column, which ``single_cells`` resamples to ``target_um_per_px`` (0.15: a median
cell of 80 px in a 160 px window). Like a scanner's known magnification, this uses the test
source's images but none of its labels.

Variants per direction (every one a shipped recipe plus overrides):
  baseline            recipes/mil_cell_export_baseline.yaml (pooled cell features, logistic regression)
  baseline colourfree   + steps.cellfeats.with.groups=[shape, texture]
  mean pooling        recipes/mil_cell_export.yaml + steps.mil.uses=mean_mil
  baseline C=1        + steps.mil.with.C=1.0 (pooled_baseline version 1: a fixed L2 strength)
  attention MIL       recipes/mil_cell_export.yaml (gated attention, CNN + radiomics instances)
  attention MIL, stain jitter  + steps.encoder.with.stain_jitter=0.05 (HED augmentation in pre-training)
and each of them with a stain option ``--stains`` (default ``reinhard``): a ``reinhard`` (or
``macenko``) step on the data before ``single_cells``, its reference the medoid of the training
partition's images (the training source only). Shared overrides (documented in the output):
the external split (``column_split`` on ``cohort``), the scale, and a shrunk encoder/MIL
encoder input (``--image-size``, default 80: the 160 px crops at half resolution, as the recipe's
256 px crops at 128 px); ``--encoder-epochs``/``--mil-epochs`` shrink the schedule (default: the
recipes' 10 and 30 epochs; the default run takes ~15-25 min on 2 shared cores).

Output: a markdown table (patient AUROC with the evaluator's bootstrap 95% interval over
patients, accuracy, seconds) with every direction side by side, and JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import wbc_pseudo_export as wpe  # noqa: E402

CELL_UM = 12.0          # nominal white-cell side (um) that the median segmented cell is mapped to
TARGET_UM_PER_PX = 0.15  # -> the median cell is 80 px
CROP_SIZE = 160          # 24 um window: at 128 px 5% of the CellaVision crops were rejected as larger
DIRECTIONS = (("tecom", "cellavision"), ("cellavision", "tecom"))


def median_cell_side(source: str) -> tuple[float, int]:
    """Median bounding-box side (px) of the segmented centre cell over a source's images (no labels)."""
    from hemaflow.lib import imageio as io
    from hemaflow.plugins.single_cells import segment_all_cells, select_centre_cell

    sides = []
    paths = sorted((wpe.DATA / source).glob("*.bmp"))
    for p in paths:
        img = io.read_image(p)
        cell, _, _ = select_centre_cell(segment_all_cells(img, 128))
        if cell is None:
            continue
        ys, xs = np.nonzero(cell)
        sides.append(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    return float(np.median(sides)), len(sides)


def variants(stains: list[str]) -> list[dict]:
    base = [
        {"name": "baseline", "recipe": "mil_cell_export_baseline.yaml", "sets": []},
        {"name": "baseline, C=1 (pooled_baseline version 1)", "recipe": "mil_cell_export_baseline.yaml",
         "sets": ["steps.mil.with.C=1.0"]},
        {"name": "baseline, colour-free features", "recipe": "mil_cell_export_baseline.yaml",
         "sets": ["steps.cellfeats.with.groups=[shape, texture]"]},
        {"name": "mean pooling", "recipe": "mil_cell_export.yaml", "sets": ["steps.mil.uses=mean_mil"]},
        {"name": "attention MIL", "recipe": "mil_cell_export.yaml", "sets": []},
        {"name": "attention MIL, stain jitter 0.05", "recipe": "mil_cell_export.yaml",
         "sets": ["steps.encoder.with.stain_jitter=0.05"]},
    ]
    out = [dict(v, stain="none") for v in base]
    for s in stains:
        for v in base:
            out.append(dict(v, stain=s, sets=v["sets"] + [
                f"steps.normalize={{uses: {s}, inputs: {{images: data, split: split}}, "
                "with: {on_failure: passthrough}}",
                "steps.cells.inputs.images=normalize"]))
    return out


def common_sets(export: Path, train: str, test: str, a: argparse.Namespace, learned: bool) -> list[str]:
    sets = [f"steps.data.with.root={export / 'export'}", f"steps.data.with.labels={export / 'labels.csv'}",
            # external validation, as recipes/mil_cell_export.yaml's comment documents it
            "steps.split.uses=column_split", "steps.split.with=!reset",
            f"steps.split.with={{column: cohort, mapping: {{{train}: train, {test}: test}}}}",
            # one physical scale for both sources (um_per_px comes from the labels CSV)
            f"steps.cells.with.crop_size={CROP_SIZE}", f"steps.cells.with.target_um_per_px={TARGET_UM_PER_PX}",
            "steps.cells.with.size_group_column=cohort"]
    if learned:  # crops seen at half resolution, as the shipped 256 px crop -> 128 px encoder
        sets += [f"steps.encoder.with.image_size={a.image_size}"]
        sets += [f"steps.encoder.with.epochs={a.encoder_epochs}"] if a.encoder_epochs else []
        sets += [f"steps.mil.with.epochs={a.mil_epochs}"] if a.mil_epochs else []
    return sets


def run_one(recipe: str, sets: list[str], run_dir: Path, cache: Path) -> dict:
    from hemaflow.core.cli import _console, _registry
    from hemaflow.core.recipe import load_recipe
    from hemaflow.core.runner import Runner
    from hemaflow.core.validate import resolve

    t0 = time.perf_counter()
    res = resolve(load_recipe(str(ROOT / "recipes" / recipe), sets), _registry())
    outcome = Runner(res, _registry(), console=_console(), cache_dir=cache).run(run_dir)
    pat = outcome.metrics.get("patient", {})
    rejected = {}
    for s in outcome.steps:
        if s.id == "cells":
            for art in s.outputs.values():
                rejected = dict(getattr(art, "meta", {}).get("rejected", {}) or {})
    return {"auroc": pat.get("auroc"), "auroc_ci": pat.get("auroc_ci"), "accuracy": pat.get("accuracy"),
            "accuracy_ci": pat.get("accuracy_ci"), "balanced_accuracy": pat.get("balanced_accuracy"),
            "n": pat.get("n"), "rejected": rejected, "seconds": round(time.perf_counter() - t0, 1),
            "run_dir": str(outcome.run_dir)}


def fmt(r: dict | None) -> tuple[str, str]:
    if not r or r.get("auroc") is None or (isinstance(r["auroc"], float) and math.isnan(r["auroc"])):
        return ("failed" if r and r.get("error") else "-"), "-"
    ci = r.get("auroc_ci") or [float("nan")] * 2
    return f"{r['auroc']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]", f"{r['accuracy']:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    ap.add_argument("--json", type=Path, default=Path("/tmp/bench_exports.json"))
    ap.add_argument("--per-class", type=int, default=16, help="patients per class per source")
    ap.add_argument("--bag", type=int, default=24, help="cells per patient")
    ap.add_argument("--minority", type=int, default=wpe.MONOCYTE, choices=sorted(wpe.CELL_TYPES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stains", default="reinhard", help="comma-separated: reinhard, macenko ('' for none)")
    ap.add_argument("--only", default="", help="';'-separated variant names to run (default: all)")
    ap.add_argument("--encoder-epochs", type=int, default=None, help="default: the recipe's (10)")
    ap.add_argument("--mil-epochs", type=int, default=None, help="default: the recipe's (30)")
    ap.add_argument("--image-size", type=int, default=CROP_SIZE // 2, help="encoder input side (crops are 160 px)")
    ap.add_argument("--quick", action="store_true", help="8 patients per class, 1 encoder epoch, 5 MIL epochs")
    a = ap.parse_args()
    if a.quick:
        a.per_class, a.encoder_epochs, a.mil_epochs = 8, 1, 5
    work = a.out or Path(tempfile.mkdtemp(prefix="bench_exports-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()

    scale = {}
    for s in wpe.SOURCES:
        med, n = median_cell_side(s)
        scale[s] = {"median_cell_side_px": med, "cells_measured": n, "um_per_px": round(CELL_UM / med, 5)}
    print("scale:", json.dumps(scale), flush=True)
    export = work / "export_data"
    if export.exists():
        shutil.rmtree(export)
    export.mkdir()
    pats = wpe.write_export(export, per_class=a.per_class, bag=a.bag, seed=a.seed, minority=a.minority,
                            rest=(wpe.NEUTROPHIL, wpe.LYMPHOCYTE), masks=False,
                            um_per_px={s: v["um_per_px"] for s, v in scale.items()})
    uniq = {s: int(np.mean([p["unique_cells"] for p in pats if p["cohort"] == s])) for s in wpe.SOURCES}
    cache = work / "cache"
    stains = [s for s in a.stains.split(",") if s]
    todo = [v for v in variants(stains) if not a.only or v["name"] in a.only.split(";")]
    results = []
    for v in todo:
        for train, test in DIRECTIONS:
            learned = v["recipe"] == "mil_cell_export.yaml"
            sets = common_sets(export, train, test, a, learned) + v["sets"]
            tag = f"{v['name']} | {v['stain']} | {train}->{test}"
            print(f"\n=== {tag}", flush=True)
            row = {"variant": v["name"], "stain": v["stain"], "recipe": v["recipe"], "train": train, "test": test,
                   "overrides": sets}
            try:
                row.update(run_one(v["recipe"], sets, work / "runs" / f"{len(results):02d}", cache))
            except Exception as exc:  # a failed variant is reported, the benchmark goes on
                traceback.print_exc()
                row["error"] = f"{type(exc).__name__}: {exc}"
            print(f"--> {tag}: {fmt(row)}", flush=True)
            results.append(row)
            a.json.write_text(json.dumps({"scale": scale, "results": results, "partial": True}, indent=1, default=str))

    total = time.perf_counter() - t_all
    header = (f"Patient AUROC [bootstrap 95% CI over test patients] / accuracy on the other source; "
              f"{a.per_class} POS + {a.per_class} NEG patients per source, {a.bag} cells each, POS "
              f"{int(wpe.POS_RATE[0] * 100)}-{int(wpe.POS_RATE[1] * 100)}% {wpe.CELL_TYPES[a.minority]}s, NEG "
              f"0-5%; seed {a.seed}; crops {CROP_SIZE} px at {TARGET_UM_PER_PX} um/px (um_per_px "
              + ", ".join(f"{s} {v['um_per_px']}" for s, v in scale.items())
              + f"); encoder image_size {a.image_size}, {a.encoder_epochs or 'recipe'} epochs, MIL "
              f"{a.mil_epochs or 'recipe'} epochs; mean unique cells per bag: "
              + ", ".join(f"{s} {u}/{a.bag}" for s, u in uniq.items()) + f"; total {total / 60:.1f} min")
    lines = [header, "", "| variant | stain | " + " | ".join(f"{tr} -> {te} AUROC | acc" for tr, te in DIRECTIONS)
             + " | seconds |", "|---|---|" + "---|---|" * len(DIRECTIONS) + "---|"]
    seen = []
    for r in results:
        key = (r["variant"], r["stain"])
        if key in seen:
            continue
        seen.append(key)
        cells, secs = [], []
        for tr, te in DIRECTIONS:
            m = next((x for x in results if (x["variant"], x["stain"], x["train"], x["test"]) == key + (tr, te)), None)
            cells += list(fmt(m))
            secs.append(f"{m['seconds']:.0f}" if m and "seconds" in m else "-")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + f" | {' + '.join(secs)} |")
    table = "\n".join(lines)
    print("\n" + table)
    a.json.write_text(json.dumps({"scale": scale, "params": {k: (str(v) if isinstance(v, Path) else v)
                                                             for k, v in vars(a).items()},
                                  "patients": pats, "results": results, "total_seconds": round(total, 1),
                                  "table": table}, indent=1, default=str))
    print(f"json: {a.json}")
    if a.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
