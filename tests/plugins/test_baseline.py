"""The pooled classical baseline (pooled_baseline): pooling, training-only fitting, predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hemaflow.core.errors import DataError
from hemaflow.plugins.artifacts import FeatureTable, Split
from hemaflow.plugins.evaluate import ClassificationEvaluator
from hemaflow.plugins.mil.baseline import PooledBaseline, pool_bags, pooled_names
from hemaflow.lib.mil_bags import build_instances, make_bags
from hemaflow.testing import check_component, make, make_context
from tests.plugins.mil_helpers import kfold_split, synthetic_instances


@pytest.fixture()
def data(tmp_path):
    feats, cells = synthetic_instances(tmp_path, n_patients=24, cells=(20, 40), dim=4, abnormal_rate=0.4)
    pl = feats.table.groupby("patient_id")["label"].first()
    split = kfold_split(tmp_path, list(pl.index), list(pl.values), k=3)
    return feats, cells, split


def test_conformance(registry):
    check_component(PooledBaseline)
    assert registry.get("mil", "pooled_baseline") is PooledBaseline


def test_pool_bags_by_hand():
    x = np.array([[1.0, 10.0], [3.0, np.nan], [5.0, 30.0], [7.0, 7.0]])
    bags = {"A": np.array([0, 1, 2]), "B": np.array([3])}
    out = pool_bags(x, bags, ["A", "B"], ["mean", "sd", "q50", "q90"])
    assert pooled_names(["f", "g"], ["mean", "sd"]) == ["mean:f", "mean:g", "sd:f", "sd:g"]
    np.testing.assert_allclose(out[0], [3.0, 20.0, np.std([1, 3, 5]), 10.0, 3.0, 20.0, 4.6, 28.0])
    np.testing.assert_allclose(out[1], [7, 7, 0, 0, 7, 7, 7, 7])


def test_predicts_minority_signal_and_evaluates_like_mil(tmp_path, data):
    feats, cells, split = data
    out = make(PooledBaseline).run(make_context(tmp_path / "w"), split=split, features=feats, cells=cells)
    pred = out["predictions"].table
    assert len(pred) == 24 and set(pred["level"]) == {"patient"}
    assert np.allclose(pred[["prob_AML", "prob_NORMAL"]].sum(axis=1), 1.0)
    assert out["metrics"].values["mil"]["n_pooled_features"] == 4 * 5
    assert (pred["y_true"] == pred["y_pred"]).mean() >= 0.9  # mean of feature 0 gives the AML bags away
    m = make(ClassificationEvaluator, n_bootstrap=0).run(make_context(tmp_path / "e"), predictions=out["predictions"],
                                                        split=split)["metrics"].values
    assert m["patient"]["n"] == 24 and m["patient"]["auroc"] >= 0.95
    att = out["attention"].table
    assert np.allclose(att.groupby("patient_id")["score"].sum(), 1.0)
    imp = pd.read_csv(out["model"].path / "feature_importance.csv")
    assert imp["feature"].iloc[0] in {"mean:f0", "q50:f0", "q90:f0", "sd:f0"}  # the signal feature leads


def test_scaler_and_model_are_fitted_on_training_patients_only(tmp_path, data):
    feats, cells, split = data
    a = make(PooledBaseline).run(make_context(tmp_path / "a"), split=split, features=feats)
    inst = build_instances(features=feats)
    bags = make_bags(inst.table)
    x = inst.matrix(0)
    train = sorted(split.patients(0, "train"))
    sc = np.load(a["model"].path / "fold0_scaler.npz")
    assert sorted(sc["train_patients"]) == train
    pooled = pool_bags(x, bags, train)
    np.testing.assert_allclose(sc["mean"], pooled.mean(0), rtol=1e-5)
    np.testing.assert_allclose(sc["std"], pooled.std(0), rtol=1e-4)
    # a drastic change to fold 0's test patients changes neither its scaler nor its model, only
    # their predictions
    test = split.patients(0, "test")
    t = feats.table.copy()
    rows = t["patient_id"].isin(test)
    t.loc[rows, "f0"] = t.loc[rows, "f0"] * 50 + 100
    b = make(PooledBaseline).run(make_context(tmp_path / "b"), split=split,
                                 features=FeatureTable(tmp_path / "shifted", t, feats.meta).save())
    sb = np.load(b["model"].path / "fold0_scaler.npz")
    np.testing.assert_array_equal(sc["mean"], sb["mean"])
    ma, mb = np.load(a["model"].path / "fold0_model.npz"), np.load(b["model"].path / "fold0_model.npz")
    np.testing.assert_array_equal(ma["coef"], mb["coef"])
    pa, pb = (r["predictions"].table.set_index("id") for r in (a, b))
    assert not np.allclose(pa.loc[sorted(test), "prob_AML"], pb.loc[sorted(test), "prob_AML"])
    # train_val adds the validation patients to the fit
    c = make(PooledBaseline, fit_on="train_val").run(make_context(tmp_path / "c"), split=split, features=feats)
    sc_c = np.load(c["model"].path / "fold0_scaler.npz")
    assert sorted(sc_c["train_patients"]) == sorted(split.patients(0, "train") | split.patients(0, "val"))


def test_random_forest_and_one_class_training_error(tmp_path, data):
    feats, cells, split = data
    rf = make(PooledBaseline, model="random_forest", n_estimators=50).run(make_context(tmp_path / "rf"),
                                                                          split=split, features=feats)
    assert (rf["predictions"].table["y_true"] == rf["predictions"].table["y_pred"]).mean() >= 0.8
    t = feats.table.copy()
    t["label"] = "AML"
    one = FeatureTable(tmp_path / "one", t, feats.meta).save()
    with pytest.raises(DataError, match="fold 0: the training patients have one class only"):
        make(PooledBaseline).run(make_context(tmp_path / "x"), split=split, features=one)


def test_baseline_recipes_run_tiny(tmp_path, registry, monkeypatch):
    """mil_baseline on the tiny synthetic headline, and mil_cell_export_baseline on a tiny export
    whose labels CSV has a cohort column (per-cohort metrics in metrics.json)."""
    import json
    from pathlib import Path

    from hemaflow.core.cli import main
    from hemaflow.lib import imageio as io

    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "cache"))
    recipes = Path(__file__).resolve().parents[2] / "recipes"
    tiny = ["--set", "steps.data.with.classes=[AML, NORMAL]", "--set", "steps.data.with.patients_per_class=3",
            "--set", "steps.data.with.images_per_patient=1", "--set", "steps.data.with.image_size=128",
            "--set", "steps.split.with.k=3", "--executor", "serial"]
    assert main(["run", str(recipes / "mil_baseline.yaml"), "--out", str(tmp_path / "syn"), *tiny]) == 0
    m = json.loads((tmp_path / "syn" / "metrics.json").read_text())
    assert m["mil"]["aggregator"] == "pooled_baseline" and m["patient"]["n"] == 6
    steps = {s["id"] for s in json.loads((tmp_path / "syn" / "provenance.json").read_text())["steps"]}
    assert "cellfeats" in steps and not {"encoder", "radiomics"} & steps

    images = make(registry.get("dataset", "synthetic_smears"), classes=["AML", "NORMAL"], patients_per_class=4,
                  images_per_patient=2, image_size=128, seed=1).run(make_context(tmp_path / "gen"))["images"]
    from tests.plugins.seg_fixtures import field

    root = tmp_path / "export"
    for i, (_, row) in enumerate(images.table.iterrows()):
        d = root / row["patient_id"]
        d.mkdir(parents=True, exist_ok=True)
        for k in range(2):  # single-cell crops: a centre white cell and a red cell
            r = 16 if row["label"] == "AML" else 12
            crop, _ = field(size=(64, 64), wbcs=((32, 32, r),), rbcs=((8, 56, 6),), seed=2 * i + k)
            io.write_png(d / f"{row['image_id']}_{k}.png", crop)
    labels = images.table.groupby("patient_id")["label"].first().rename_axis("patient").rename("diagnosis").to_frame()
    labels["cohort"] = ["A" if i % 2 == 0 else "B" for i in range(len(labels))]
    labels.to_csv(tmp_path / "labels.csv")
    args = ["--set", f"steps.data.with.root={root}", "--set", f"steps.data.with.labels={tmp_path / 'labels.csv'}",
            "--set", "steps.split.with.k=2", "--set", "steps.cells.with.crop_size=48", "--executor", "serial"]
    assert main(["run", str(recipes / "mil_cell_export_baseline.yaml"), "--out", str(tmp_path / "exp"), *args]) == 0
    m = json.loads((tmp_path / "exp" / "metrics.json").read_text())
    c = m["cohort"]
    assert c["available"] is True and set(c["per_cohort"]) == {"A", "B"}
    assert c["per_cohort"]["A"]["n"] + c["per_cohort"]["B"]["n"] == m["patient"]["n"] == 8
    split = pd.read_csv(tmp_path / "exp" / "split.csv")
    cohort = labels["cohort"].to_dict()
    mixing = sum(bool({cohort[q] for q in g.loc[g["partition"] != "test", "patient_id"]}
                      & {cohort[q] for q in g.loc[g["partition"] == "test", "patient_id"]})
                 for _, g in split.groupby("fold"))
    assert c["batch_effect"]["n_patients"] == 8 and c["folds_mixing_cohorts"] == mixing > 0
    assert c["warning"] is (c["batch_effect"]["auroc"] > 0.8)
    assert "Cohort shift" in (tmp_path / "exp" / "report.html").read_text()
    # external validation by the cohort column: train on A, test on B; no mixing, no warning
    ext = args + ["--set", "steps.split.uses=column_split", "--set", "steps.split.with=!reset",
                  "--set", "steps.split.with={column: cohort, mapping: {A: train, B: test}}"]
    assert main(["run", str(recipes / "mil_cell_export_baseline.yaml"), "--out", str(tmp_path / "ext"), *ext]) == 0
    m = json.loads((tmp_path / "ext" / "metrics.json").read_text())
    assert m["patient"]["n"] == 4 and list(m["cohort"]["per_cohort"]) == ["B"]
    assert m["cohort"]["folds_mixing_cohorts"] == 0 and m["cohort"]["warning"] is False


def test_auto_c_regularizes_many_noisy_features_and_needs_two_per_class():
    from hemaflow.plugins.mil.baseline import AUTO_CS, AutoC

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 20)
    x = rng.normal(size=(40, 400))
    x[:, 0] += 1.5 * y  # one informative column among 400
    est = AutoC(class_weight="balanced", seed=0).fit(x, y)
    assert est.chosen_C in AUTO_CS and est.chosen_C < 1.0
    assert est.predict_proba(x).shape == (40, 2) and set(est.classes_) == {0, 1}
    # one patient of a class: no inner split possible, the fixed C=1 is used
    one = AutoC(class_weight=None, seed=0).fit(x[:21], y[:21])
    assert one.chosen_C == 1.0


def test_auto_c_is_the_default_and_recorded_per_fold(tmp_path, data):
    feats, cells, split = data
    assert PooledBaseline.schema["properties"]["C"]["default"] == "auto"
    out = make(PooledBaseline).run(make_context(tmp_path / "ctx"), split=split, features=feats)
    folds = out["metrics"].values["mil"]["folds"]
    assert len(folds) == 3 and all(f["C"] > 0 for f in folds)
    fixed = make(PooledBaseline, C=0.5).run(make_context(tmp_path / "ctx2"), split=split, features=feats)
    assert all("C" not in f for f in fixed["metrics"].values["mil"]["folds"])


def test_refit_fold_fits_every_patient_and_leaves_the_folds_alone(tmp_path, data):
    feats, cells, split = data
    refit = Split(tmp_path / "refit-split", split.table.copy(), dict(split.meta, refit_fold=3)).save()
    a = make(PooledBaseline).run(make_context(tmp_path / "a"), split=split, features=feats)
    b = make(PooledBaseline).run(make_context(tmp_path / "b"), split=refit, features=feats)
    pd.testing.assert_frame_equal(a["predictions"].table, b["predictions"].table)  # the evaluation is the folds'
    mb = b["metrics"].values["mil"]
    assert mb["refit"]["fold"] == 3 and mb["refit"]["train"] == 24 and len(mb["folds"]) == 3
    assert b["model"].meta["folds"] == [0, 1, 2, 3] and b["model"].meta["refit_fold"] == 3
    sc = np.load(b["model"].path / "fold3_scaler.npz")
    assert sorted(sc["train_patients"]) == sorted(feats.table["patient_id"].astype(str).unique())
    assert "refit" not in a["metrics"].values["mil"] and not (a["model"].path / "fold3_model.npz").exists()
