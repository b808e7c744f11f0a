"""Cohort-shift diagnostics: metrics per cohort, batch-effect AUROC, the mixing warning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hemaflow.core.artifacts import Predictions
from hemaflow.plugins.artifacts import FeatureTable, ImageSet, Split
from hemaflow.plugins.cohort import CohortShift, cohort_auroc, fold_mixing
from hemaflow.testing import check_component, make, make_context

N = 24  # patients: P00-P11 in cohort A, P12-P23 in cohort B, classes alternate


def patients():
    return [f"P{i:02d}" for i in range(N)], ["AML" if i % 2 == 0 else "NORMAL" for i in range(N)], \
        ["A" if i < N // 2 else "B" for i in range(N)]


@pytest.fixture()
def world(tmp_path):
    pids, labels, cohorts = patients()
    rng = np.random.default_rng(0)
    img = pd.DataFrame({"image_id": [f"{p}_0" for p in pids], "patient_id": pids, "label": labels,
                        "path": [f"{p}.png" for p in pids], "cohort": cohorts})
    images = ImageSet(tmp_path / "images", img, {"classes": ["AML", "NORMAL"]}).save()
    rows = []
    for p, lab, c in zip(pids, labels, cohorts):
        for k in range(10):
            shape = rng.normal() + (1.0 if lab == "AML" else 0.0)
            colour = rng.normal() + (4.0 if c == "B" else 0.0)  # the cohorts differ in stain colour only
            rows.append({"cell_id": f"{p}_0:{k}", "image_id": f"{p}_0", "patient_id": p, "label": lab,
                         "shape_area": shape, "colour_R_mean": colour, "texture_x": rng.normal()})
    cols = ["shape_area", "colour_R_mean", "texture_x"]
    shifted = FeatureTable(tmp_path / "f", pd.DataFrame(rows), {"feature_columns": cols}).save()
    same = pd.DataFrame(rows).assign(colour_R_mean=lambda d: rng.normal(size=len(d)))
    alike = FeatureTable(tmp_path / "g", same, {"feature_columns": cols}).save()
    # predictions: every cohort-A patient right, cohort B right for half of them
    pred = []
    for i, (p, lab, c) in enumerate(zip(pids, labels, cohorts)):
        other = "NORMAL" if lab == "AML" else "AML"
        right = c == "A" or (i // 2) % 2 == 0
        yp = lab if right else other
        pa = 0.9 if yp == "AML" else 0.1
        pred.append({"id": p, "level": "patient", "fold": i % 3, "y_true": lab, "y_pred": yp,
                     "prob_AML": pa, "prob_NORMAL": 1 - pa})
    preds = Predictions(tmp_path / "p", pd.DataFrame(pred), {"classes": ["AML", "NORMAL"]}).save()
    return images, shifted, alike, preds


def kfold_by_prediction_fold(tmp_path, preds) -> Split:
    t = preds.table
    rows = [{"fold": f, "patient_id": p, "partition": "test" if fold == f else "train"}
            for f in range(3) for p, fold in zip(t["id"], t["fold"])]
    return Split(tmp_path / "split", pd.DataFrame(rows), {"kind": "kfold", "n_folds": 3}).save()


def test_conformance(registry):
    check_component(CohortShift)
    assert registry.get("evaluator", "cohort_shift") is CohortShift


def test_metrics_per_cohort_and_warning_on_a_mixing_cv(tmp_path, world):
    images, shifted, _, preds = world
    split = kfold_by_prediction_fold(tmp_path, preds)
    ctx = make_context(tmp_path / "w")
    m = make(CohortShift).run(ctx, predictions=preds, images=images, features=shifted, split=split)["metrics"].values
    c = m["cohort"]
    assert c["per_cohort"]["A"]["accuracy"] == 1.0 and c["per_cohort"]["A"]["n"] == 12
    assert c["per_cohort"]["B"]["accuracy"] == 0.5 and c["per_cohort"]["B"]["n"] == 12
    assert c["per_cohort"]["A"]["auroc"] == 1.0
    assert c["patients_per_class"] == {"A": {"AML": 6, "NORMAL": 6}, "B": {"AML": 6, "NORMAL": 6}}
    be = c["batch_effect"]
    assert be["auroc"] > 0.95 and be["n_patients"] == N and be["cohorts"] == {"A": 12, "B": 12}
    assert be["by_group"]["colour"] > 0.95  # colour gives the cohort away
    assert be["by_group"]["shape"] < be["by_group"]["colour"] - 0.1  # shape (24 patients of noise) does not
    assert c["folds_mixing_cohorts"] == 3 and c["warning"] is True
    assert len(ctx.warnings) == 1 and "predictable from the features" in ctx.warnings[0]
    assert "column_split on 'cohort'" in ctx.warnings[0]


def test_no_warning_for_external_validation_or_alike_cohorts(tmp_path, world):
    images, shifted, alike, preds = world
    pids, _, cohorts = patients()
    external = Split(tmp_path / "ext", pd.DataFrame({"fold": 0, "patient_id": pids,
                                                     "partition": ["train" if c == "A" else "test" for c in cohorts]}),
                     {"kind": "column_split", "n_folds": 1}).save()
    assert fold_mixing(external, dict(zip(pids, cohorts))) == [
        {"fold": 0, "train_cohorts": ["A"], "test_cohorts": ["B"], "shared": []}]
    ext_preds = Predictions(tmp_path / "pe", preds.table.assign(fold=0), preds.meta).save()
    ctx = make_context(tmp_path / "a")
    m = make(CohortShift).run(ctx, predictions=ext_preds, images=images, features=shifted,
                              split=external)["metrics"].values["cohort"]
    assert m["warning"] is False and ctx.warnings == [] and m["batch_effect"]["auroc"] > 0.95
    assert list(m["per_cohort"]) == ["B"]  # only the test cohort is predicted in an external split
    split = kfold_by_prediction_fold(tmp_path, preds)
    ctx = make_context(tmp_path / "b")
    m = make(CohortShift).run(ctx, predictions=preds, images=images, features=alike, split=split)["metrics"].values
    assert m["cohort"]["batch_effect"]["auroc"] < 0.8 and m["cohort"]["warning"] is False and ctx.warnings == []


def test_missing_column_is_recorded_not_fatal(tmp_path, world):
    images, shifted, _, preds = world
    ctx = make_context(tmp_path / "w")
    m = make(CohortShift, cohort_column="site").run(ctx, predictions=preds, images=images)["metrics"].values
    assert m == {"cohort": {"column": "site", "available": False}}


def test_cohort_auroc_is_cross_validated(tmp_path):
    rng = np.random.default_rng(0)
    y = ["A"] * 20 + ["B"] * 20
    noise = rng.normal(size=(40, 30))  # 30 noise features, 40 patients: a fit on all would separate them
    assert 0.2 < cohort_auroc(noise, y) < 0.8
    signal = noise.copy()
    signal[20:, 0] += 5
    assert cohort_auroc(signal, y) > 0.95
    assert cohort_auroc(noise, ["A"] * 39 + ["B"]) is None  # one patient in a cohort: no CV possible
