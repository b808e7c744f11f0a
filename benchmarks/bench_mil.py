"""MIL benchmarks: headline wall time, ablation rerun from the cache, attention vs mean pooling.

Run:  python benchmarks/bench_mil.py            (everything; ~30 min on 2 cores)
      python benchmarks/bench_mil.py --only step,toy      (seconds to a minute)
      python benchmarks/bench_mil.py --only headline
      python benchmarks/bench_mil.py --only minority --seeds 0,1,2,3,4,5 [--cache DIR]

Parts:
  step      one attention-MIL training step on a 200-instance bag of 512-d features (CPU).
  toy       attention vs mean pooling on instance features where a minority of cells carries
            the signal (tests/plugins/mil_helpers.py), several seeds: patient balanced accuracy
            and precision@k of the top-scored cells against the planted abnormal cells.
  headline  wall time of `hemaflow run recipes/mil_multimodal.yaml` with a fresh cache, then of
            each aggregator ablation on the same cache: as its own process, and all of them in
            one `hemaflow run A B ...` process (a sweep) on a fresh cache.
  minority  the full pipeline (synthetic smears -> segmentation -> cells -> radiomics + CNN ->
            MIL) with a minority of abnormal cells (10-30%), ~20 cells per patient and 24
            patients per class (120 per seed; with the headline's 8 per class a fold trains on
            ~26 bags, too few for attention to learn where to look): gated attention (headline)
            vs attention, per-class branches, mean and max pooling, per seed on one cache;
            patient metrics, r-precision, and each variant against mean pooling on the same
            patients (McNemar's test, bootstrap interval). About 7 minutes per seed on 2 cores.
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
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_step() -> None:
    """One training step as hemaflow's training loop takes it (fused AdamW), and its parts."""
    import torch

    from hemaflow.plugins.mil import build_net

    torch.set_num_threads(1)
    net = build_net("attention", 512, 5, {"hidden": 128})
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)
    x, y = torch.randn(200, 512), torch.tensor([2])

    def step(parts: dict[str, float] | None = None) -> None:
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x)[0][None], y)
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        if parts is not None:
            t3 = time.perf_counter()
            for k, v in (("forward", t1 - t0), ("backward", t2 - t1), ("optimizer", t3 - t2)):
                parts[k] = parts.get(k, 0.0) + v

    for _ in range(20):
        step()
    n = 300
    t = time.perf_counter()
    for _ in range(n):
        step()
    total = (time.perf_counter() - t) / n * 1000
    parts: dict[str, float] = {}
    for _ in range(n):
        step(parts)
    split = ", ".join(f"{k} {v / n * 1000:.2f} ms" for k, v in parts.items())
    print(f"[step] attention MIL training step, 200 x 512-d bag, 1 thread, fused AdamW: {total:.2f} ms ({split})")


def bench_toy(seeds=(0, 1, 2), n_patients: int = 30) -> None:
    from hemaflow.plugins import mil
    from hemaflow.testing import make, make_context
    from tests.plugins.mil_helpers import kfold_split, synthetic_instances

    rows = {"mean_mil": [], "attention_mil": [], "gated_attention_mil": []}
    for seed in seeds:
        tmp = Path(tempfile.mkdtemp())
        feats, cells = synthetic_instances(tmp, n_patients=n_patients, cells=(20, 60), dim=16, abnormal_rate=0.1, seed=seed)
        pl = feats.table.groupby("patient_id")["label"].first()
        split = kfold_split(tmp, list(pl.index), list(pl.values), k=5, seed=seed)
        for cls in (mil.MeanMIL, mil.AttentionMIL, mil.GatedAttentionMIL):
            res = make(cls, epochs=40, gallery_patients=0).run(make_context(tmp / cls.name, seed=seed),
                                                               split=split, features=feats, cells=cells)
            pr = res["predictions"].table
            bacc = float(np.mean([(g.y_pred == g.y_true).mean() for _, g in pr.groupby("y_true")]))
            m = res["metrics"].values["mil"]
            rows[cls.name].append((bacc, m["precision_at_k"], m["abnormal_fraction"], m["r_precision_at_k"]))
    print(f"[toy] {n_patients} patients (AML/NORMAL), 20-60 cells each, 10% abnormal cells in AML bags, 5-fold, seeds {list(seeds)}")
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


ABLATIONS = ["mil_mean.yaml", "mil_max.yaml", "mil_transformer.yaml", "mil_majority_vote.yaml",
             "mil_image_only.yaml", "mil_radiomics_only.yaml", "mil_baseline.yaml"]  # last: the classical baseline


IMPORTS = "import torch, torch._dynamo, sklearn.metrics, pandas, matplotlib.pyplot"  # torch.optim's step imports _dynamo


def bench_headline(ablations: bool = True) -> None:
    """The headline from a fresh cache, then aggregator ablations on the same cache, measured two
    ways: each ablation as its own `hemaflow run` process (pays Python, torch, torch._dynamo,
    scikit-learn and matplotlib imports every time, ~9 s here), and every recipe in one process
    (`hemaflow run A B ...`, a fresh cache again), where an ablation costs only what it reruns."""
    others = ABLATIONS if ablations else ABLATIONS[:1]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        t_full, m_full = hemaflow_run("mil_multimodal.yaml", d / "full", d / "cache")
        print(f"[headline] hemaflow run recipes/mil_multimodal.yaml (fresh cache): {t_full:.1f} s  -- {_summary(m_full)}",
              flush=True)
        for recipe in others:
            t_abl, m_abl = hemaflow_run(recipe, d / recipe, d / "cache")
            prov = json.loads((d / recipe / "provenance.json").read_text())
            ran = [f"{s['id']} {s['seconds']:.1f}s" for s in prov["steps"] if not s["cache_hit"]]
            print(f"[headline] then, own process: hemaflow run recipes/{recipe}: {t_abl:.1f} s = "
                  f"{100 * t_abl / t_full:.1f}% of the headline (ran: {', '.join(ran)})  -- {_summary(m_abl)}", flush=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True)
        floor = time.perf_counter() - t
        print(f"[headline] the libraries an ablation rerun loads, imported alone ({IMPORTS!r}): {floor:.1f} s = "
              f"{100 * floor / t_full:.1f}% of the headline, paid by every new process", flush=True)
        cmd = [sys.executable, "-m", "hemaflow", "run", *[str(ROOT / "recipes" / r) for r in ["mil_multimodal.yaml", *others]],
               "--out", str(d / "sweep")]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=dict(os.environ, HEMAFLOW_CACHE_DIR=str(d / "cache2")), cwd=ROOT,
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:])
            raise SystemExit(f"sweep failed ({proc.returncode})")
        rows = json.loads((d / "sweep" / "sweep.json").read_text())
        head = rows[0]["seconds"]
        print(f"[sweep] hemaflow run recipes/mil_multimodal.yaml + {len(others)} ablations in one process, fresh cache: "
              f"{wall:.1f} s wall; the headline inside it {head:.1f} s", flush=True)
        for r in rows[1:]:
            print(f"[sweep]   {Path(r['recipe']).name:26s} {r['seconds']:5.1f} s = {100 * r['seconds'] / head:4.1f}% of the "
                  f"headline run in the same process (patient bal acc {r['patient_balanced_accuracy']:.3f})", flush=True)


def hemaflow_sweep(recipes: list[str], out: Path, cache: Path, *sets: str) -> dict[str, tuple[float, dict]]:
    """Run several recipes in one process (`hemaflow run A B ...`); return recipe -> (seconds, metrics)."""
    env = dict(os.environ, HEMAFLOW_CACHE_DIR=str(cache))
    cmd = [sys.executable, "-m", "hemaflow", "run", *[str(ROOT / "recipes" / r) for r in recipes], "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:])
        raise SystemExit(f"{recipes} failed ({proc.returncode})")
    res = {}
    for r in recipes:
        run_dir = out / r.removesuffix(".yaml")
        prov = json.loads((run_dir / "provenance.json").read_text())
        res[r] = (float(prov.get("seconds", float("nan"))), json.loads((run_dir / "metrics.json").read_text()))
    return res


MINORITY_RECIPES = ["mil_multimodal.yaml", "mil_mean.yaml", "mil_max.yaml", "mil_baseline.yaml"]
MINORITY_EXTRA = {"attention_mil": ["steps.mil.uses=attention_mil"],
                  "gated per_class": ["steps.mil.with.branches=per_class"]}


def _paired(correct: dict[str, dict[tuple[int, str], bool]], reference: str) -> None:
    """Each variant against ``reference`` on the same patients (all seeds pooled): patients only
    it got right / only the reference got right, McNemar's exact test, and a bootstrap 95%
    interval (patients resampled) of the accuracy difference."""
    from scipy.stats import binomtest

    ref = correct[reference]
    rng = np.random.default_rng(0)
    for name, c in correct.items():
        if name == reference:
            continue
        keys = sorted(set(c) & set(ref))
        a = np.array([c[k] for k in keys], dtype=float)
        b = np.array([ref[k] for k in keys], dtype=float)
        wins, losses = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
        p = binomtest(wins, wins + losses).pvalue if wins + losses else 1.0
        boot = [(a[i] - b[i]).mean() for i in rng.integers(0, len(a), size=(2000, len(a)))]
        lo, hi = np.percentile(boot, [2.5, 97.5])
        print(f"[minority]   {name:22s} vs {reference}: accuracy {a.mean() - b.mean():+.3f} (95% CI {lo:+.3f} to {hi:+.3f}), "
              f"{wins} patients only it got right, {losses} only {reference}; McNemar p = {p:.3f} (n={len(a)})")


def _cell_separability(run_dir: Path, cache: Path) -> dict[str, float]:
    """How well the radiomics features tell the planted cells apart, given the generator's
    cell-level truth (which MIL never sees): a logistic regression on the radiomics step's
    cached table, patient-grouped 5-fold CV, target = the patient's class for abnormal cells and
    "normal" otherwise. Returns the recall per target class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from hemaflow.core.cache import StepCache

    prov = json.loads((run_dir / "provenance.json").read_text())
    key = next(st["cache_key"] for st in prov["steps"] if st["component"] == "radiomics")
    t = pd.read_parquet(StepCache(cache).entry(key) / "features" / "table.parquet")
    x = np.nan_to_num(t.filter(like="radiomics_").to_numpy(float))
    y = np.where(t["truth"] == "abnormal", t["label"], "normal")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.3))
    pred = cross_val_predict(clf, x, y, groups=t["patient_id"], cv=GroupKFold(5))
    return {c: float((pred[y == c] == c).mean()) for c in np.unique(y)}


def bench_minority(seeds=(0, 1, 2), images_per_patient: int = 8, cache: Path | None = None,
                   rate: tuple[float, float] = (0.1, 0.3), patients_per_class: int = 24) -> None:
    """A minority of abnormal cells (10-30% per leukemic patient) and bigger bags (8 fields per
    patient, about 20 cells): gated attention (the headline) vs plain attention, per-class
    attention branches, mean and max pooling; same cache per seed, several seeds."""
    sets = [f"steps.data.with.abnormal_rate=[{rate[0]}, {rate[1]}]",
            f"steps.data.with.images_per_patient={images_per_patient}",
            f"steps.data.with.patients_per_class={patients_per_class}"]
    rows: dict[str, list[dict]] = {}
    correct: dict[str, dict[tuple[int, str], bool]] = {}  # variant -> (seed, patient) -> right?
    separability: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        cache = cache or d / "cache"
        for seed in seeds:
            res = hemaflow_sweep(MINORITY_RECIPES, d / f"seed{seed}", cache, *sets, f"seed={seed}")
            run_dirs = {r: d / f"seed{seed}" / r.removesuffix(".yaml") for r in MINORITY_RECIPES}
            for name, extra in MINORITY_EXTRA.items():
                _, m = hemaflow_run("mil_multimodal.yaml", d / f"seed{seed}-{name}", cache, *sets, *extra, f"seed={seed}")
                res[name] = (0.0, m)
                run_dirs[name] = d / f"seed{seed}-{name}"
            sep = _cell_separability(run_dirs["mil_multimodal.yaml"], cache)
            separability.append(sep)
            print(f"[minority] seed {seed} cell-level recall of radiomics given the truth: "
                  + ", ".join(f"{c} {v:.2f}" for c, v in sep.items()), flush=True)
            for r, (t, m) in res.items():
                print(f"[minority] seed {seed} {r:22s} {_summary(m)}", flush=True)
                rows.setdefault(r, []).append({**m.get("patient", {}), **{k: v for k, v in m.get("mil", {}).items()
                                                                          if isinstance(v, (int, float))}})
                pr = pd.read_csv(run_dirs[r] / "predictions.csv")
                pr = pr[pr["level"] == "patient"]
                correct.setdefault(r, {}).update({(seed, i): bool(ok) for i, ok in zip(pr["id"], pr["y_true"] == pr["y_pred"])})
    _paired(correct, reference="mil_mean.yaml")
    print("[minority] cell-level recall of radiomics given the generator's truth (mean over seeds): "
          + ", ".join(f"{c} {np.mean([s[c] for s in separability]):.2f}" for c in separability[0]))
    print(f"[minority] abnormal_rate {list(rate)}, {patients_per_class} patients per class, {images_per_patient} fields "
          f"per patient, seeds {list(seeds)}: mean over seeds")
    for r, ms in rows.items():
        def avg(key):
            vals = [m[key] for m in ms if key in m]
            return float(np.mean(vals)) if vals else float("nan")
        print(f"[minority]   {r:22s} patient acc {avg('accuracy'):.3f}, bal acc {avg('balanced_accuracy'):.3f}, "
              f"AUROC {avg('auroc'):.3f}; precision@k {avg('precision_at_k'):.3f}, r-precision "
              f"{avg('r_precision_at_k'):.3f} (chance {avg('abnormal_fraction'):.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="step,toy,headline,minority")
    ap.add_argument("--seeds", default="0,1,2", help="minority: seeds (e.g. 0,1,2,3,4,5)")
    ap.add_argument("--cache", help="minority: keep the step cache here (rerun only the MIL variants)")
    ap.add_argument("--rate", default="0.1,0.3", help="minority: abnormal-cell rate range of leukemic patients")
    ap.add_argument("--fields", type=int, default=8, help="minority: fields per patient")
    ap.add_argument("--patients", type=int, default=24, help="minority: patients per class")
    ap.add_argument("--toy-patients", type=int, default=30, help="toy: patients (AML and NORMAL)")
    args = ap.parse_args()
    parts = args.only.split(",")
    for name in ("step", "toy", "headline", "minority"):
        if name in parts:
            if name == "minority":
                lo, hi = (float(x) for x in args.rate.split(","))
                bench_minority(seeds=tuple(int(x) for x in args.seeds.split(",")), images_per_patient=args.fields,
                               cache=Path(args.cache) if args.cache else None, rate=(lo, hi),
                               patients_per_class=args.patients)
            elif name == "toy":
                bench_toy(n_patients=args.toy_patients)
            else:
                globals()[f"bench_{name}"]()


if __name__ == "__main__":
    main()
