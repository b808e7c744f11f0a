"""Bundles (issue 18): train the headline tiny, export fold 1, apply it in a fresh process with an
empty cache to that fold's test patients (same probabilities), to new patients, to a shifted
cohort (OOD warning); the classical baseline on a per-cell export; the checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from hemaflow.core.cli import main

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
DATA = {"classes": "[AML, NORMAL]", "patients_per_class": "6", "images_per_patient": "2", "image_size": "128"}
TINY = [x for k, v in DATA.items() for x in ("--set", f"steps.data.with.{k}={v}")] + [
    "--set", "steps.split.with.k=3", "--set", "steps.radiomics.with.classes=[firstorder]",
    "--set", "steps.encoder.with.backbone=test_convnext", "--set", "steps.encoder.with.image_size=32",
    "--set", "steps.encoder.with.epochs=1", "--set", "steps.mil.with.epochs=2", "--executor", "serial"]
FOLD = 1


@contextmanager
def cache_env(path: Path):
    old = os.environ.get("HEMAFLOW_CACHE_DIR")
    os.environ["HEMAFLOW_CACHE_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HEMAFLOW_CACHE_DIR", None)
        else:
            os.environ["HEMAFLOW_CACHE_DIR"] = old


def data_images(run: Path, step: str = "data"):
    """The ImageSet a run's data step wrote (from its cache entry)."""
    from hemaflow.core.cache import StepCache
    from hemaflow.core.plugins import get_registry

    prov = json.loads((run / "provenance.json").read_text())
    key = next(s["cache_key"] for s in prov["steps"] if s["id"] == step)
    t, p = StepCache(Path(prov["cache"])).outputs(key)["images"]
    return get_registry().artifact_type(t).load(p)


def write_manifest(images, dest: Path, patients=None, transform=None) -> Path:
    """Copy (and optionally transform) the images of ``patients`` into a manifest data set;
    return the data step YAML for `hemaflow predict`."""
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    rows = []
    for _, r in images.table.iterrows():
        if patients is not None and str(r["patient_id"]) not in patients:
            continue
        img = np.asarray(Image.open(images.image_path(r)).convert("RGB"))
        if transform is not None:
            img = transform(img)
        Image.fromarray(img).save(dest / f"{r['image_id']}.png")
        rows.append({"image": f"{r['image_id']}.png", "patient": r["patient_id"], "label": r["label"],
                     "image_id": r["image_id"]})
    pd.DataFrame(rows).to_csv(dest / "manifest.csv", index=False)
    (dest / "data.yaml").write_text(f"uses: manifest\nwith: {{path: {dest / 'manifest.csv'}, id_column: image_id}}\n")
    return dest / "data.yaml"


def fresh_predict(bundle: Path, data: Path, out: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HEMAFLOW_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "hemaflow", "predict", str(bundle), str(data), "--out", str(out)],
                          env=env, capture_output=True, text=True, cwd=REPO, timeout=600)


def test_patients(run: Path, fold: int) -> list[str]:
    split = pd.read_csv(run / "split.csv")
    return sorted(split.loc[(split["fold"] == fold) & (split["partition"] == "test"), "patient_id"].astype(str))


test_patients.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def headline(tmp_path_factory):
    root = tmp_path_factory.mktemp("headline")
    with cache_env(root / "cache"):
        assert main(["run", str(RECIPES / "mil_multimodal.yaml"), "--out", str(root / "run"), *TINY]) == 0
        assert main(["export", str(root / "run"), "--out", str(root / "model.hfb"), "--fold", str(FOLD)]) == 0
    return root


def test_bundle_holds_every_fitted_part_and_no_pickle(headline):
    b = headline / "model.hfb"
    info = json.loads((b / "bundle.json").read_text())
    assert info["fold"] == FOLD and info["classes"] == ["AML", "NORMAL"] and info["hemaflow"]
    assert set(info["parts"]) == {"normalize", "encoder", "mil"}
    assert info["training_data"]["input_data_hash"] and info["expects"] == {"width_px": 128, "height_px": 128}
    files = sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert files == ["bundle.json", "model_card.md", "parts/encoder/encoder.safetensors", "parts/mil/net.safetensors",
                     "parts/mil/state.safetensors", "parts/normalize/reference.png", "parts/normalize/state.json",
                     "recipe.json"]
    # the scaler is the run's own fold scaler
    run_scaler = np.load(next((headline / "cache").rglob(f"model/fold{FOLD}_scaler.npz")))
    st = load_file(str(b / "parts/mil/state.safetensors"))
    assert np.array_equal(st["mean"], run_scaler["mean"]) and np.array_equal(st["pca_components"],
                                                                             run_scaler["pca_components"])
    steps = json.loads((b / "recipe.json").read_text())["steps"]
    assert list(steps) == ["normalize", "segment", "postprocess", "cells", "radiomics", "encoder", "mil"]
    assert steps["normalize"]["with"]["reference"] == "@bundle/parts/normalize/reference.png"
    assert steps["encoder"]["with"]["pretrain"] == "none" and steps["mil"]["uses"] == "apply_bundle"
    assert all("split" not in s["inputs"] for s in steps.values())
    card = (b / "model_card.md").read_text()
    assert "## Intended use" in card and "accuracy" in card and "[" in card  # metrics with intervals


def test_fresh_process_reproduces_the_folds_test_predictions(headline, tmp_path):
    run = headline / "run"
    pats = test_patients(run, FOLD)
    data = write_manifest(data_images(run), tmp_path / "test_patients", set(pats))
    cache = tmp_path / "empty-cache"
    r = fresh_predict(headline / "model.hfb", data, tmp_path / "pred", cache)
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(tmp_path / "pred" / "predictions.csv").set_index("id")
    want = pd.read_csv(run / "predictions.csv").set_index("id").loc[pats]
    assert sorted(got.index) == pats
    for c in ("prob_AML", "prob_NORMAL"):
        assert np.abs(got.loc[pats, c].to_numpy() - want[c].to_numpy()).max() < 1e-6
    assert list(got.loc[pats, "y_pred"]) == list(want["y_pred"]) and set(got["fold"]) == {FOLD}
    att = pd.read_csv(tmp_path / "pred" / "mil-attention.csv")
    assert set(att["patient_id"].astype(str)) == set(pats)
    assert np.allclose(att.groupby("patient_id")["score"].sum(), 1.0)
    assert not got["ood_warning"].any()  # the training cohort's held-out patients
    html = (tmp_path / "pred" / "report.html").read_text()
    assert "Out-of-distribution check" in html and "no patient above the threshold" in html
    prov = json.loads((tmp_path / "pred" / "provenance.json").read_text())
    assert prov["cache"] == str(cache) and not any(s["cache_hit"] for s in prov["steps"] if s["id"] != "data")


def test_new_patients_run_and_a_shifted_cohort_is_warned(headline, tmp_path):
    new = tmp_path / "new.yaml"
    new.write_text("uses: synthetic_smears\nwith: {classes: [AML, NORMAL], patients_per_class: 6, "
                   "images_per_patient: 2, image_size: 128, seed: 5}\n")
    assert main(["predict", str(headline / "model.hfb"), str(new), "--out", str(tmp_path / "new")]) == 0
    p_new = pd.read_csv(tmp_path / "new" / "predictions.csv")
    assert len(p_new) == 12 and np.allclose(p_new[["prob_AML", "prob_NORMAL"]].sum(axis=1), 1.0)
    assert not p_new["ood_warning"].any()
    # the same new patients, scanned darker (every channel x 0.6): Macenko does not undo it
    shifted = write_manifest(data_images(tmp_path / "new"), tmp_path / "dark",
                             transform=lambda im: (im * 0.6).astype(np.uint8))
    assert main(["predict", str(headline / "model.hfb"), str(shifted), "--out", str(tmp_path / "dark-run")]) == 0
    p_dark = pd.read_csv(tmp_path / "dark-run" / "predictions.csv")
    assert p_dark["ood_warning"].sum() >= 6 and p_dark["ood_score"].median() > 2 * p_new["ood_score"].median()
    prov = json.loads((tmp_path / "dark-run" / "provenance.json").read_text())
    warned = {w.split("'")[1] for s in prov["steps"] for w in s["warnings"] if "out of distribution" in w}
    assert len(warned) == p_dark["ood_warning"].sum()  # a patient may be warned by features and by stain
    groups = {n: json.loads((tmp_path / n / "metrics.json").read_text())["bundle"] for n in ("new", "dark-run")}
    assert groups["dark-run"]["cohort_shift"] and not groups["new"]["cohort_shift"]
    assert any("as a group are far from the bundle's training cohort" in w for s in prov["steps"] for w in s["warnings"])
    assert "patients above the threshold" in (tmp_path / "dark-run" / "report.html").read_text()


def test_a_stain_shifted_cohort_is_warned_by_the_raw_stain_check(headline, tmp_path):
    """The generator's lab-to-lab stain shift (sites: 3, stain_variation: 3) is normalized away before
    the features, so the feature OOD score misses it; the raw-image stain check (before normalization)
    must flag most of those patients, and none of the training patients themselves."""
    info = json.loads((headline / "model.hfb" / "bundle.json").read_text())
    stain = info["parts"]["mil"]["stain_ood"]
    assert stain["n_reference_patients"] == 12 and stain["threshold"] == pytest.approx(1.25 * stain["reference_max"])
    own = tmp_path / "own.yaml"
    own.write_text("uses: synthetic_smears\nwith: {classes: [AML, NORMAL], patients_per_class: 6, "
                   "images_per_patient: 2, image_size: 128}\n")
    assert main(["predict", str(headline / "model.hfb"), str(own), "--out", str(tmp_path / "own")]) == 0
    p_own = pd.read_csv(tmp_path / "own" / "predictions.csv")
    assert not p_own["stain_warning"].any() and p_own["stain_score"].max() <= stain["reference_max"] + 1e-6
    shifted = tmp_path / "shifted.yaml"
    shifted.write_text("uses: synthetic_smears\nwith: {classes: [AML, NORMAL], patients_per_class: 6, "
                       "images_per_patient: 2, image_size: 128, seed: 5, sites: 3, stain_variation: 3}\n")
    assert main(["predict", str(headline / "model.hfb"), str(shifted), "--out", str(tmp_path / "shifted")]) == 0
    p_sh = pd.read_csv(tmp_path / "shifted" / "predictions.csv")
    assert p_sh["stain_warning"].sum() >= 5 and p_sh["ood_warning"].sum() > len(p_sh) / 2  # measured: 6 and 7 of 12
    prov = json.loads((tmp_path / "shifted" / "provenance.json").read_text())
    warned = [w for s in prov["steps"] for w in s["warnings"] if "out of distribution by stain" in w]
    assert len(warned) == p_sh["stain_warning"].sum()
    assert json.loads((tmp_path / "shifted" / "metrics.json").read_text())["bundle"]["cohort_shift"]
    assert "Stain check (raw images, before normalization)" in (tmp_path / "shifted" / "report.html").read_text()
    print("stain-flagged: own", int(p_own["stain_warning"].sum()), "/", len(p_own), "; shifted",
          int(p_sh["stain_warning"].sum()), "/", len(p_sh), "; feature OOD on shifted",
          int((p_sh["ood_score"] > info["parts"]["mil"]["ood"]["threshold"]).sum()))


def test_zip_bundle_and_the_checks(headline, tmp_path, capsys):
    run = headline / "run"
    with cache_env(headline / "cache"):
        assert main(["export", str(run), "--out", str(tmp_path / "m.zip"), "--fold", "0"]) == 0
    pats = test_patients(run, 0)
    data = write_manifest(data_images(run), tmp_path / "f0", set(pats))
    assert main(["predict", str(tmp_path / "m.zip"), str(data), "--out", str(tmp_path / "z")]) == 0
    got = pd.read_csv(tmp_path / "z" / "predictions.csv").set_index("id").loc[pats, "prob_AML"]
    want = pd.read_csv(run / "predictions.csv").set_index("id").loc[pats, "prob_AML"]
    assert np.abs(got.to_numpy() - want.to_numpy()).max() < 1e-6
    capsys.readouterr()

    bad = tmp_path / "other-version.hfb"
    shutil.copytree(headline / "model.hfb", bad)
    info = json.loads((bad / "bundle.json").read_text())
    info["hemaflow"] = "9.4.0"
    (bad / "bundle.json").write_text(json.dumps(info))
    assert main(["predict", str(bad), str(data), "--out", str(tmp_path / "v")]) == 3
    err = capsys.readouterr().err
    assert "the bundle was written by hemaflow 9.4.0, this is hemaflow" in err and "Traceback" not in err
    assert main(["predict", str(bad), str(data), "--out", str(tmp_path / "vw"), "--version-policy", "warn"]) == 0
    prov = json.loads((tmp_path / "vw" / "provenance.json").read_text())
    assert any("written by hemaflow 9.4.0" in w for s in prov["steps"] for w in s["warnings"])
    capsys.readouterr()

    gone = tmp_path / "missing.hfb"
    shutil.copytree(headline / "model.hfb", gone)
    (gone / "parts/mil/net.safetensors").unlink()
    assert main(["predict", str(gone), str(data), "--out", str(tmp_path / "m")]) == 3
    assert "missing part parts/mil/net.safetensors (listed in bundle.json)" in capsys.readouterr().err

    big = write_manifest(data_images(run), tmp_path / "big", set(pats),
                         transform=lambda im: np.kron(im, np.ones((2, 2, 1), np.uint8))[:192, :192])
    assert main(["predict", str(headline / "model.hfb"), str(big), "--out", str(tmp_path / "b")]) == 3
    assert "the new images are 192x192 px (median), the bundle expects fields of 128x128 px" in capsys.readouterr().err

    assert main(["export", str(run), "--out", str(tmp_path / "x.hfb"), "--fold", "7"]) == 2
    assert "--fold 7: the run's MIL step trained folds [0, 1, 2]" in capsys.readouterr().err
    elsewhere = tmp_path / "run-elsewhere"
    shutil.copytree(run, elsewhere)
    prov = json.loads((elsewhere / "provenance.json").read_text())
    prov["cache"] = str(tmp_path / "no-cache-here")
    (elsewhere / "provenance.json").write_text(json.dumps(prov))
    assert main(["export", str(elsewhere), "--out", str(tmp_path / "y.hfb")]) == 3
    assert "the cache entry of step 'mil'" in capsys.readouterr().err


def test_refit_bundle_is_fitted_on_every_patient_for_the_folds_chosen_epochs(headline, tmp_path):
    """refit: true on the split: the cross-validation is unchanged (same split, same predictions), one
    more encoder and MIL model is fitted on every patient for the median of the folds' validation-chosen
    epochs, and `hemaflow export` ships that one by default; it runs on new patients."""
    from hemaflow.core.artifacts import Model
    from hemaflow.core.cache import StepCache
    from hemaflow.plugins.splits import refit_epochs

    run = tmp_path / "refit-run"
    with cache_env(headline / "cache"):
        assert main(["run", str(RECIPES / "mil_multimodal.yaml"), "--out", str(run), *TINY,
                     "--set", "steps.split.with.refit=true"]) == 0
        assert main(["export", str(run), "--out", str(tmp_path / "refit.hfb")]) == 0
    plain = headline / "run"
    assert (run / "split.csv").read_text() == (plain / "split.csv").read_text()
    got, want = (pd.read_csv(r / "predictions.csv").sort_values("id").reset_index(drop=True) for r in (run, plain))
    pd.testing.assert_frame_equal(got, want)  # the folds' evaluation does not change
    mil = json.loads((run / "metrics.json").read_text())["mil"]
    assert len(mil["folds"]) == 3 and mil["refit"]["fold"] == 3 and mil["refit"]["train"] == 12
    prov = json.loads((run / "provenance.json").read_text())
    keys = {s["id"]: s["cache_key"] for s in prov["steps"]}
    cache = StepCache(Path(prov["cache"]))
    model_dir = Path(cache.outputs(keys["mil"])["model"][1])
    best = [max(r["epoch"] for r in json.loads((model_dir / f"fold{f}_history.json").read_text()) if r["selected"])
            for f in range(3)]
    assert mil["refit"]["chosen_epochs"] == best and mil["refit"]["epochs"] == refit_epochs(best)
    assert len(json.loads((model_dir / "fold3_history.json").read_text())) == refit_epochs(best)
    enc_dir = Path(cache.outputs(keys["encoder"])["model"][1])
    enc_folds = Model.load(enc_dir).meta["folds"]
    assert (enc_dir / "fold3.safetensors").exists() and [m["fold"] for m in enc_folds] == [0, 1, 2, 3]
    assert enc_folds[3]["refit"] and enc_folds[3]["epochs"] == refit_epochs([m["best_epoch"] for m in enc_folds[:3]])
    assert len(enc_folds[3]["history"]) == enc_folds[3]["epochs"]
    info = json.loads((tmp_path / "refit.hfb" / "bundle.json").read_text())
    assert info["fold"] == 3 and info["refit"] is True and info["refit_info"]["train"] == 12
    card = (tmp_path / "refit.hfb" / "model_card.md").read_text()
    assert "fold 3 (refit)" in card and "fitted on 12 training patients" in card
    fold_net = load_file(str(headline / "model.hfb" / "parts" / "mil" / "net.safetensors"))
    refit_net = load_file(str(tmp_path / "refit.hfb" / "parts" / "mil" / "net.safetensors"))
    assert any(not np.array_equal(fold_net[k], refit_net[k]) for k in fold_net)
    assert (tmp_path / "refit.hfb" / "parts/encoder/encoder.safetensors").read_bytes() == \
        (enc_dir / "fold3.safetensors").read_bytes()
    new = tmp_path / "new.yaml"
    new.write_text("uses: synthetic_smears\nwith: {classes: [AML, NORMAL], patients_per_class: 3, "
                   "images_per_patient: 2, image_size: 128, seed: 7}\n")
    r = fresh_predict(tmp_path / "refit.hfb", new, tmp_path / "pred", tmp_path / "empty-cache")
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert len(got) == 6 and set(got["fold"]) == {3} and np.allclose(got[["prob_AML", "prob_NORMAL"]].sum(axis=1), 1)
    # fold k of the same run is still exportable
    with cache_env(headline / "cache"):
        assert main(["export", str(run), "--out", str(tmp_path / "f1.hfb"), "--fold", "1"]) == 0
    assert json.loads((tmp_path / "f1.hfb" / "bundle.json").read_text())["refit"] is False


# -- the classical baseline on a per-cell export --------------------------------------------------
def write_cell_export(root: Path, seed: int, shift=None) -> pd.DataFrame:
    """<root>/<patient>/<cell>.png, 8 patients, 4 crops each: AML cells larger than NORMAL cells."""
    from hemaflow.lib import imageio as io
    from tests.plugins.seg_fixtures import field

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(8):
        pid, label = f"Q{seed}{i:02d}", ("AML", "NORMAL")[i % 2]
        (root / pid).mkdir(parents=True, exist_ok=True)
        for k in range(4):
            r = int(rng.integers(14, 19) if label == "AML" else rng.integers(10, 15))
            crop, _ = field(size=(64, 64), wbcs=((32, 32, r),), rbcs=((8, 56, 6),), seed=seed * 100 + 4 * i + k)
            if shift is not None:
                crop = shift(crop)
            io.write_png(root / pid / f"c{k}.png", crop)
        rows.append({"patient": pid, "diagnosis": label, "cohort": "AB"[(i // 2) % 2]})
    return pd.DataFrame(rows)


def test_cell_export_baseline_bundle(tmp_path, capsys):
    root = tmp_path / "export"
    labels = write_cell_export(root, 1)
    labels.to_csv(tmp_path / "labels.csv", index=False)
    args = ["--set", f"steps.data.with.root={root}", "--set", f"steps.data.with.labels={tmp_path / 'labels.csv'}",
            "--set", "steps.split.with.k=2", "--set", "steps.cells.with.crop_size=48", "--executor", "serial"]
    run = tmp_path / "run"
    assert main(["run", str(RECIPES / "mil_cell_export_baseline.yaml"), "--out", str(run), *args]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "base.hfb"), "--fold", "0"]) == 0
    info = json.loads((tmp_path / "base.hfb" / "bundle.json").read_text())
    assert info["parts"]["mil"]["kind"] == "pooled_baseline" and set(info["parts"]) == {"mil"}
    card = (tmp_path / "base.hfb" / "model_card.md").read_text()
    assert "## Per cohort" in card and "| A |" in card and "| B |" in card
    # fold 0's test patients as a plain folder of patients, no labels: the `predict` shortcut
    pats = test_patients(run, 0)
    new = tmp_path / "new"
    for q in pats:
        shutil.copytree(root / q, new / q)
    r = fresh_predict(tmp_path / "base.hfb", new, tmp_path / "pred", tmp_path / "empty-cache")
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(tmp_path / "pred" / "predictions.csv").set_index("id")
    want = pd.read_csv(run / "predictions.csv").set_index("id").loc[pats]
    assert np.abs(got.loc[pats, "prob_AML"].to_numpy() - want["prob_AML"].to_numpy()).max() < 1e-6
    assert got["y_true"].isna().all() and not got["ood_warning"].any()
    # another lab's stain (no normalizer in this recipe): every patient warned
    write_cell_export(tmp_path / "lab2", 2, shift=lambda im: np.clip(im * np.array([0.7, 1.0, 1.2]), 0, 255)
                      .astype(np.uint8))
    assert main(["predict", str(tmp_path / "base.hfb"), str(tmp_path / "lab2"), "--out", str(tmp_path / "p2")]) == 0
    assert pd.read_csv(tmp_path / "p2" / "predictions.csv")["ood_warning"].all()
    assert json.loads((tmp_path / "p2" / "metrics.json").read_text())["bundle"]["cohort_shift"]
    # a random forest cannot travel without pickles: the export says so
    assert main(["run", str(RECIPES / "mil_cell_export_baseline.yaml"), "--out", str(tmp_path / "rf"), *args,
                 "--set", "steps.mil.with.model=random_forest", "--set", "steps.mil.with.n_estimators=5"]) == 0
    assert main(["export", str(tmp_path / "rf"), "--out", str(tmp_path / "rf.hfb")]) == 3
    assert "a random_forest baseline cannot be exported without pickles" in capsys.readouterr().err


def test_apply_bundle_passes_the_conformance_kit():
    from hemaflow.plugins.mil.apply import ApplyBundle, kit_params
    from hemaflow.testing import check_component

    check_component(ApplyBundle, params=kit_params, inputs={"embeddings": None, "cells": None})


def test_segmenter_weights_travel_in_the_bundle(tmp_path, monkeypatch):
    """deeplabv3 with shipped weights: the weights file is copied into the bundle and read from there."""
    from hemaflow.plugins.segment.learned import shipped_weights

    small = [x for k, v in {**DATA, "patients_per_class": "3", "images_per_patient": "1"}.items()
             for x in ("--set", f"steps.data.with.{k}={v}")] + TINY[8:]
    seg = ["--set", "steps.segment.uses=deeplabv3", "--set", "steps.segment.with=!reset",
           "--set", "steps.segment.with={weights: wbc-v1}"]
    run = tmp_path / "run"
    assert main(["run", str(RECIPES / "mil_multimodal.yaml"), "--out", str(run), *small, *seg]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "m.hfb"), "--fold", "1"]) == 0
    copied = tmp_path / "m.hfb" / "parts" / "segment" / "weights-wbc-v1.safetensors"
    assert copied.read_bytes() == shipped_weights()["wbc-v1"].read_bytes()
    steps = json.loads((tmp_path / "m.hfb" / "recipe.json").read_text())["steps"]
    assert steps["segment"]["with"]["weights"] == "@bundle/parts/segment/weights-wbc-v1.safetensors"
    pats = test_patients(run, 1)
    data = write_manifest(data_images(run), tmp_path / "t", set(pats))
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "fresh-cache"))
    assert main(["predict", str(tmp_path / "m.hfb"), str(data), "--out", str(tmp_path / "p")]) == 0
    got = pd.read_csv(tmp_path / "p" / "predictions.csv").set_index("id").loc[pats, "prob_AML"]
    want = pd.read_csv(run / "predictions.csv").set_index("id").loc[pats, "prob_AML"]
    assert np.abs(got.to_numpy() - want.to_numpy()).max() < 1e-6


def test_cell_export_mil_bundle(tmp_path):
    """mil_cell_export.yaml (single_cells, radiomics, encoder, gated attention): fold 0 reproduced
    in a fresh process from a plain folder of its test patients."""
    root = tmp_path / "export"
    write_cell_export(root, 1).to_csv(tmp_path / "labels.csv", index=False)
    args = ["--set", f"steps.data.with.root={root}", "--set", f"steps.data.with.labels={tmp_path / 'labels.csv'}",
            "--set", "steps.split.with.k=2", "--set", "steps.cells.with.crop_size=48",
            "--set", "steps.radiomics.with.classes=[firstorder]", "--set", "steps.encoder.with.backbone=test_convnext",
            "--set", "steps.encoder.with.image_size=32", "--set", "steps.encoder.with.epochs=1",
            "--set", "steps.mil.with.epochs=2", "--executor", "serial"]
    run = tmp_path / "run"
    assert main(["run", str(RECIPES / "mil_cell_export.yaml"), "--out", str(run), *args]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "m.hfb"), "--fold", "0"]) == 0
    assert set(json.loads((tmp_path / "m.hfb" / "bundle.json").read_text())["parts"]) == {"encoder", "mil"}
    pats = test_patients(run, 0)
    for q in pats:
        shutil.copytree(root / q, tmp_path / "new" / q)
    r = fresh_predict(tmp_path / "m.hfb", tmp_path / "new", tmp_path / "pred", tmp_path / "empty-cache")
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(tmp_path / "pred" / "predictions.csv").set_index("id").loc[pats]
    want = pd.read_csv(run / "predictions.csv").set_index("id").loc[pats]
    assert np.abs(got["prob_AML"].to_numpy() - want["prob_AML"].to_numpy()).max() < 1e-6
    assert (got["y_pred"] == want["y_pred"]).all()
