"""The mlflow tracker: flattening, a real local file store, and the missing-dependency error."""

from __future__ import annotations

import json
import sys

import pytest

from hemaflow.core.errors import PluginError
from hemaflow.plugins.tracking import MlflowTracker, numeric_metrics, recipe_params
from hemaflow.testing import check_component, make


def test_tracker_contract():
    check_component(MlflowTracker)


def test_recipe_params_flattened():
    recipe = {"name": "r", "seed": 0, "steps": {"data": {"uses": "synthetic_smears",
                                                         "with": {"classes": ["ALL", "AML"], "seed": None}},
                                                "mil": {"with": {"epochs": 3, "lr": 0.001}}}}
    assert recipe_params(recipe) == {"name": "r", "seed": "0", "steps.data.uses": "synthetic_smears",
                                     "steps.data.with.classes": '["ALL", "AML"]', "steps.data.with.seed": "null",
                                     "steps.mil.with.epochs": "3", "steps.mil.with.lr": "0.001"}
    assert len(recipe_params({"x": "y" * 10000})["x"]) == 6000


def test_numeric_metrics():
    m = {"patient": {"accuracy": 0.75, "n": 4, "balanced_accuracy_ci": [0.5, 1.0], "auroc": None,
                     "confusion_matrix": {"labels": ["A", "B"], "matrix": [[1, 1], [0, 2]]},
                     "per_class": {"A": {"f1": 0.5}}, "aggregated_from": "image"},
         "segmentation": {"dice": float("nan")},
         "folds": [{"fold": 0, "patient": {"accuracy": 1.0}}, {"fold": 1, "patient": {"accuracy": 0.5}}]}
    assert numeric_metrics(m) == {"patient.accuracy": 0.75, "patient.n": 4.0, "patient.balanced_accuracy_ci_lo": 0.5,
                                  "patient.balanced_accuracy_ci_hi": 1.0, "patient.per_class.A.f1": 0.5,
                                  "folds.0.patient.accuracy": 1.0, "folds.1.patient.accuracy": 0.5}


def test_missing_mlflow_names_the_extra(tmp_path, monkeypatch):
    for mod in ("mlflow", "mlflow.entities", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(PluginError, match=r"pip install 'hemaflow\[mlflow\]'"):
        make(MlflowTracker).track(tmp_path, {"recipe": {}, "metrics": {}})


def test_tracking_uri_defaults(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tmp_path / "runs" / "x-1"
    assert make(MlflowTracker).tracking_uri(run_dir) == (tmp_path / "runs" / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert make(MlflowTracker).tracking_uri(run_dir) == "http://mlflow.example:5000"
    assert make(MlflowTracker, tracking_uri=str(tmp_path / "store")).tracking_uri(run_dir) == \
        (tmp_path / "store").as_uri()


TINY = """\
name: tiny_tracked
description: tiny run logged to MLflow
seed: 0
steps:
  data:
    uses: synthetic_smears
    with: {classes: [ALL, NORMAL], patients_per_class: 2, images_per_patient: 1, image_size: 128}
  seg:
    uses: ground_truth
    inputs: {images: data}
  eval:
    uses: segmentation
    inputs: {masks: seg, images: data}
    with: {partition: all, n_overlays: 1}
trackers:
  mlflow: {uses: mlflow, with: {experiment: tiny, tags: {purpose: test}}}
"""


def test_real_run_logged_to_local_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow is an optional dependency (pip install 'hemaflow[mlflow]')")
    from mlflow.tracking import MlflowClient

    from hemaflow.core.cli import main
    from hemaflow.core.diff import flatten

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    run_dir = tmp_path / "runs" / "tracked"
    assert main(["run", str(recipe), "--out", str(run_dir)]) == 0
    info = json.loads((run_dir / "mlflow.json").read_text())
    assert info["tracking_uri"] == (tmp_path / "runs" / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    r = client.get_run(info["run_id"])
    assert r.info.status == "FINISHED" and r.info.run_name == "tracked"
    assert client.get_experiment(r.info.experiment_id).name == "tiny"
    import yaml

    resolved = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())
    assert r.data.params == recipe_params(resolved)
    assert r.data.params["steps.eval.with.partition"] == "all"
    assert set(r.data.params) == set(flatten(resolved))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    logged = {k: v for k, v in r.data.metrics.items() if k != "run.duration_s"}
    assert logged == pytest.approx(numeric_metrics(metrics))
    assert logged["segmentation.dice"] == 1.0  # ground-truth masks against themselves
    assert r.data.tags["hemaflow.recipe"] == "tiny_tracked" and r.data.tags["purpose"] == "test"
    assert sorted(a.path for a in client.list_artifacts(r.info.run_id)) == \
        ["metrics.json", "provenance.json", "recipe.resolved.yaml", "report.html"]
