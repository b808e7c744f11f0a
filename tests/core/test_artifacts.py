"""Core artifact types: round trips, checks and what they export into a run directory."""

from __future__ import annotations

import pandas as pd
import pytest

from hemaflow.core.artifacts import Metrics, Model, Predictions, TableArtifact
from hemaflow.plugins.artifacts import Split


def test_table_round_trip(tmp_path):
    t = pd.DataFrame({"id": ["a", "b"], "x": [1.5, 2.5]})
    TableArtifact(tmp_path / "t", t, {"note": "hi"}).save()
    back = TableArtifact.load(tmp_path / "t")
    pd.testing.assert_frame_equal(back.table, t)
    assert back.meta == {"note": "hi"}


def test_predictions_need_probability_columns(tmp_path):
    t = pd.DataFrame({"id": ["p1"], "level": ["patient"], "fold": [0], "y_true": ["ALL"], "y_pred": ["ALL"],
                      "prob_ALL": [0.9]})
    with pytest.raises(ValueError, match=r"missing probability columns \['prob_AML'\]"):
        Predictions(tmp_path / "p", t, {"classes": ["ALL", "AML"]}).save()


def test_split_rejects_a_patient_in_two_partitions(tmp_path):
    t = pd.DataFrame({"fold": [0, 0, 0], "patient_id": ["P1", "P1", "P2"], "partition": ["train", "test", "val"]})
    with pytest.raises(ValueError) as exc:
        Split(tmp_path / "s", t).save()
    assert str(exc.value) == "patient leak: patient 'P1' is in test and train of fold 0 (1 leaking patient(s) in all)"


def test_split_export_writes_csv_and_hash(tmp_path):
    t = pd.DataFrame({"fold": [0, 0], "patient_id": ["P1", "P2"], "partition": ["train", "test"]})
    s = Split(tmp_path / "s", t).save()
    run = tmp_path / "run"
    run.mkdir()
    s.export(run, "split")
    assert (run / "split.hash").read_text().strip() == s.meta["hash"]
    assert pd.read_csv(run / "split.csv").shape == (2, 3)


def test_model_exports_its_learning_curves(tmp_path):
    m = Model(tmp_path / "m").save()
    (m.path / "history.csv").write_text("fold,epoch,val_loss\nfold0,1,0.5\n")
    run = tmp_path / "run"
    run.mkdir()
    m.export(run, "classify")
    assert (run / "classify-history.csv").read_text().startswith("fold,epoch,val_loss")
    assert not (run / "classify-feature_attention.csv").exists()


def test_metrics_round_trip(tmp_path):
    Metrics(tmp_path / "m", {"patient": {"accuracy": 0.5}}).save()
    assert Metrics.load(tmp_path / "m").values == {"patient": {"accuracy": 0.5}}
