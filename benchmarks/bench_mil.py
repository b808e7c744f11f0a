"""MIL benchmarks: headline wall time, ablation rerun from the cache, attention vs mean pooling.

Run:  python benchmarks/bench_mil.py            (everything; ~10-20 min on 2 busy cores)
      python benchmarks/bench_mil.py --only step,toy      (seconds to a minute)
      python benchmarks/bench_mil.py --only headline
      python benchmarks/bench_mil.py --only minority

Parts:
  step      one attention-MIL training step on a 200-instance bag of 512-d features (CPU).
  toy       attention vs mean pooling on instance features where a minority of cells carries
            the signal (tests/plugins/mil_helpers.py), several seeds: patient balanced accuracy
            and precision@k of the top-scored cells against the planted abnormal cells.
  headline  wall time of `hemaflow run recipes/mil_multimodal.yaml` with a fresh cache, then of
            `hemaflow run recipes/mil_mean.yaml` on the same cache (an aggregator ablation).
  minority  the full pipeline (synthetic smears -> segmentation -> cells -> radiomics + CNN ->
            MIL) with a low abnormal-cell rate: gated attention vs mean pooling, same cache.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_step() -> None:
    import torch

    from hemaflow.plugins.mil import build_net

    torch.set_num_threads(1)
    net = build_net("attention", 512, 5, {"hidden": 128})
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(200, 512), torch.tensor([2])
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(net(x)[0][None], y)
        opt.zero_grad(); loss.backward(); opt.step()
    n = 200
    t = time.perf_counter()
    for _ in range(n):
        loss = torch.nn.functional.cross_entropy(net(x)[0][None], y)
        opt.zero_grad(); loss.backward(); opt.step()
    print(f"[step] attention MIL training step, 200 x 512-d bag, 1 thread: {(time.perf_counter() - t) / n * 1000:.2f} ms")


def bench_toy(seeds=(0, 1, 2)) -> None:
    from hemaflow.plugins import mil
    from hemaflow.testing import make, make_context
    from tests.plugins.mil_helpers import kfold_split, synthetic_instances

    rows = {"mean_mil": [], "attention_mil": [], "gated_attention_mil": []}
    for seed in seeds:
        tmp = Path(tempfile.mkdtemp())
        feats, cells = synthetic_instances(tmp, n_patients=30, cells=(20, 60), dim=16, abnormal_rate=0.1, seed=seed)
        pl = feats.table.groupby("patient_id")["label"].first()
        split = kfold_split(tmp, list(pl.index), list(pl.values), k=5, seed=seed)
        for cls in (mil.MeanMIL, mil.AttentionMIL, mil.GatedAttentionMIL):
            res = make(cls, epochs=40, gallery_patients=0).run(make_context(tmp / cls.name, seed=seed),
                                                               split=split, features=feats, cells=cells)
            pr = res["predictions"].table
            bacc = float(np.mean([(g.y_pred == g.y_true).mean() for _, g in pr.groupby("y_true")]))
            m = res["metrics"].values["mil"]
            rows[cls.name].append((bacc, m["precision_at_k"], m["abnormal_fraction"], m["r_precision_at_k"]))
    print(f"[toy] 30 patients (AML/NORMAL), 20-60 cells each, 10% abnormal cells in AML bags, 5-fold, seeds {list(seeds)}")
    for name, r in rows.items():
        a = np.array(r)
        print(f"[toy]   {name:22s} patient balanced acc {a[:, 0].mean():.3f} (per seed {np.round(a[:, 0], 3).tolist()}), "
              f"precision@5 {a[:, 1].mean():.3f}, r-precision {a[:, 3].mean():.3f} (chance {a[:, 2].mean():.3f})")


def hemaflow_run(recipe: str, out: Path, cache: Path, *sets: str) -> tuple[float, dict]:
    env = dict(os.environ, HEMAFLOW_CACHE_DIR=str(cache))
    cmd = [sys.executable, "-m", "hemaflow", "run", str(ROOT / "recipes" / recipe), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"{recipe} failed ({proc.returncode})")
    return wall, json.loads((out / "metrics.json").read_text())


def _summary(m: dict) -> str:
    p, mil = m.get("patient", {}), m.get("mil", {})
    s = (f"patient acc {p.get('accuracy', float('nan')):.3f}, bal acc {p.get('balanced_accuracy', float('nan')):.3f}, "
         f"macro F1 {p.get('macro_f1', float('nan')):.3f}, AUROC {p.get('auroc', float('nan')):.3f} (n={p.get('n')})")
    if "precision_at_k" in mil:
        s += (f"; precision@{mil['k']} {mil['precision_at_k']:.3f}, r-precision {mil['r_precision_at_k']:.3f} "
              f"(chance {mil['abnormal_fraction']:.3f})")
    return s


def bench_headline(ablations: bool = True) -> None:
    """Fresh cache: the headline, then every ablation on the same cache (mil_mean first)."""
    others = ["mil_mean.yaml"] + ([] if not ablations else [
        "mil_max.yaml", "mil_transformer.yaml", "mil_majority_vote.yaml", "mil_image_only.yaml",
        "mil_radiomics_only.yaml", "mil_patches.yaml"])
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t_full, m_full = hemaflow_run("mil_multimodal.yaml", d / "full", d / "cache")
        print(f"[headline] hemaflow run recipes/mil_multimodal.yaml (fresh cache): {t_full:.1f} s  -- {_summary(m_full)}",
              flush=True)
        for recipe in others:
            t_abl, m_abl = hemaflow_run(recipe, d / recipe, d / "cache")
            prov = json.loads((d / recipe / "provenance.json").read_text())
            ran = [f"{s['id']} {s['seconds']:.1f}s" for s in prov["steps"] if not s["cache_hit"]]
            print(f"[headline] then hemaflow run recipes/{recipe} (same cache): {t_abl:.1f} s = "
                  f"{100 * t_abl / t_full:.1f}% of the headline (ran: {', '.join(ran)})  -- {_summary(m_abl)}", flush=True)


def bench_minority() -> None:
    sets = ["steps.data.with.abnormal_rate=[0.1, 0.3]"]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        out = {}
        for recipe in ("mil_multimodal.yaml", "mil_mean.yaml"):
            t, m = hemaflow_run(recipe, d / recipe, d / "cache", *sets)
            out[recipe] = (t, m)
    for recipe, (t, m) in out.items():
        print(f"[minority] {recipe:20s} abnormal_rate [0.1, 0.3]: {_summary(m)}  ({t:.0f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="step,toy,headline,minority")
    args = ap.parse_args()
    parts = args.only.split(",")
    for name in ("step", "toy", "headline", "minority"):
        if name in parts:
            globals()[f"bench_{name}"]()


if __name__ == "__main__":
    main()
