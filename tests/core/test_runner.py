"""The runner on small real pipelines: run directory, cache reuse, sharing, --no-cache, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hemaflow.core.cli import main

RECIPES = Path(__file__).parent / "recipes"


def run(recipe: str, out: Path, *args: str) -> int:
    return main(["run", str(RECIPES / recipe), "--out", str(out), *args])


def provenance(run_dir: Path) -> dict:
    return json.loads((run_dir / "provenance.json").read_text())


def test_run_directory_follows_the_contract(tmp_path):
    assert run("tiny.yaml", tmp_path / "a") == 0
    d = tmp_path / "a"
    for name in ("recipe.resolved.yaml", "provenance.json", "metrics.json", "predictions.csv", "report.html"):
        assert (d / name).is_file(), name
    resolved = yaml.safe_load((d / "recipe.resolved.yaml").read_text())
    assert resolved["steps"]["data"]["with"]["patients_per_class"] == 1
    assert resolved["seed"] == 0 and resolved["report"]["uses"] == "html"
    metrics = json.loads((d / "metrics.json").read_text())
    assert 0.0 <= metrics["segmentation"]["dice"] <= 1.0
    assert metrics["segmentation"]["n"] == 5
    prov = provenance(d)
    assert prov["status"] == "ok" and prov["seed"] == 0
    assert prov["versions"]["hemaflow"] and prov["versions"]["python"]
    assert prov["input_data_hash"]
    assert [s["id"] for s in prov["steps"]] == ["data", "segment", "evaluate"]
    assert all(not s["cache_hit"] and len(s["cache_key"]) == 64 for s in prov["steps"])
    assert prov["plugins"]["classical"]["distribution"] == "hemaflow"
    assert list(pd.read_csv(d / "predictions.csv").columns[:5]) == ["id", "level", "fold", "y_true", "y_pred"]


def test_rerun_hits_the_cache_and_gives_the_same_metrics(tmp_path):
    assert run("tiny.yaml", tmp_path / "a") == 0
    assert run("tiny.yaml", tmp_path / "b") == 0
    assert [s["cache_hit"] for s in provenance(tmp_path / "b")["steps"]] == [True, True, True]
    assert (tmp_path / "a" / "metrics.json").read_text() == (tmp_path / "b" / "metrics.json").read_text()


def test_recipes_share_upstream_steps(tmp_path):
    assert run("tiny.yaml", tmp_path / "a") == 0
    assert run("tiny_nucleus.yaml", tmp_path / "b") == 0
    hits = {s["id"]: s["cache_hit"] for s in provenance(tmp_path / "b")["steps"]}
    assert hits == {"data": True, "segment": True, "evaluate": False}
    a = provenance(tmp_path / "a")["steps"]
    b = provenance(tmp_path / "b")["steps"]
    assert a[0]["cache_key"] == b[0]["cache_key"] and a[2]["cache_key"] != b[2]["cache_key"]


def test_set_override_changes_the_key_and_seed_changes_everything(tmp_path):
    assert run("tiny.yaml", tmp_path / "a") == 0
    assert run("tiny.yaml", tmp_path / "b", "--set", "seed=1") == 0
    assert not any(s["cache_hit"] for s in provenance(tmp_path / "b")["steps"])


def test_no_cache_neither_reads_nor_writes(tmp_path):
    cache = Path(os.environ["HEMAFLOW_CACHE_DIR"])
    assert run("tiny.yaml", tmp_path / "a", "--no-cache") == 0
    assert not (cache / "steps").exists()
    assert (tmp_path / "a" / "report.html").exists()
    assert run("tiny.yaml", tmp_path / "b") == 0
    assert run("tiny.yaml", tmp_path / "c", "--no-cache") == 0
    assert not any(s["cache_hit"] for s in provenance(tmp_path / "c")["steps"])


def test_executor_override(tmp_path):
    assert run("tiny.yaml", tmp_path / "a", "--executor", "processes") == 0
    assert provenance(tmp_path / "a")["executor"] == "processes"
    assert run("tiny.yaml", tmp_path / "b", "--executor", "procesess") == 2  # a usage error (contract)


def _cached_steps(cache: Path) -> int:
    return len(list((cache / "steps").glob("*/*/step.json"))) if (cache / "steps").exists() else 0


def test_sigkill_mid_step_then_rerun_reuses_finished_steps(tmp_path):
    """Kill a run with SIGKILL inside a step; the rerun reuses every finished step and gives the
    same metrics as an uninterrupted run in a separate cache."""
    cache = tmp_path / "cache"
    env = dict(os.environ, HEMAFLOW_CACHE_DIR=str(cache))
    cmd = [sys.executable, "-m", "hemaflow", "run", str(RECIPES / "slow.yaml"), "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _cached_steps(cache) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    finished = _cached_steps(cache)
    assert 4 <= finished < 6
    assert not (tmp_path / "killed" / "metrics.json").exists()
    assert provenance(tmp_path / "killed")["status"] == "running"  # it says the run never finished
    # half-written work directories never count as entries
    for entry in (cache / "steps").glob("*/*"):
        assert (entry / "step.json").exists() and (entry / "outputs.json").exists()

    os.environ["HEMAFLOW_CACHE_DIR"] = str(cache)  # restored by the autouse monkeypatch fixture
    assert main(["run", str(RECIPES / "slow.yaml"), "--out", str(tmp_path / "resumed")]) == 0
    steps = provenance(tmp_path / "resumed")["steps"]
    assert sum(s["cache_hit"] for s in steps) >= finished

    os.environ["HEMAFLOW_CACHE_DIR"] = str(tmp_path / "fresh-cache")
    assert main(["run", str(RECIPES / "slow.yaml"), "--out", str(tmp_path / "clean")]) == 0
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "clean" / "metrics.json").read_text())
    fa = pd.read_parquet(next((cache / "steps").rglob("features/table.parquet")))
    fb = pd.read_parquet(next((tmp_path / "fresh-cache" / "steps").rglob("features/table.parquet")))
    pd.testing.assert_frame_equal(fa, fb)


def test_invalid_recipe_does_not_start_and_exits_1(tmp_path, capsys):
    (tmp_path / "bad.yaml").write_text(
        "name: bad\nsteps:\n  data:\n    uses: synthetic_smears\n"
        "    with: {patients_per_class: 1, images_per_patient: 1, image_size: 96}\n"
        "  cells:\n    uses: cell_crops\n    inputs: {images: data, masks: segment}\n"
        "  segment:\n    uses: ground_truth\n    inputs: {images: cells_missing_masks}\n")
    assert main(["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "/steps/segment/inputs/images: no step 'cells_missing_masks'" in err


THREE_EVALUATORS = """\
name: three_evaluators
seed: 0
device: cpu
steps:
  data:
    uses: synthetic_smears
    with: {patients_per_class: 1, images_per_patient: 1, image_size: 96}
  segment:
    uses: classical
    inputs: {images: data}
  eval_cell:
    uses: segmentation
    inputs: {masks: segment, images: data}
    with: {partition: all, target: cell, n_overlays: 0}
  eval_nucleus:
    uses: segmentation
    inputs: {masks: segment, images: data}
    with: {partition: all, target: nucleus, n_overlays: 0}
  eval_both:
    uses: segmentation
    inputs: {masks: segment, images: data}
    with: {partition: all, target: both, n_overlays: 1}
"""


def test_evaluators_writing_the_same_section_do_not_collide(tmp_path):
    recipe = tmp_path / "three.yaml"
    recipe.write_text(THREE_EVALUATORS)
    assert main(["run", str(recipe), "--out", str(tmp_path / "r")]) == 0
    d = tmp_path / "r"
    metrics = json.loads((d / "metrics.json").read_text())
    # the first evaluator keeps the contract's section name; the others get their own sections
    assert list(metrics) == ["segmentation", "segmentation@eval_nucleus", "segmentation@eval_both"]
    first, nucleus, both = (metrics[k] for k in metrics)
    assert first["target"] == "cell" and "dice_nucleus" not in first and first["n"] == 5
    assert nucleus["target"] == "nucleus" and "dice_cell" not in nucleus
    assert both["target"] == "cell" and both["dice_cell"] == first["dice"]
    assert both["dice_nucleus"] == nucleus["dice"] != first["dice"]  # three different results survive
    steps = {s["id"]: s["metrics"] for s in provenance(d)["steps"]}
    assert steps == {"data": [], "segment": [], "eval_cell": ["segmentation"],
                     "eval_nucleus": ["segmentation@eval_nucleus"], "eval_both": ["segmentation@eval_both"]}
    # each evaluator's per-image scores land in the run directory
    for sid in ("eval_cell", "eval_nucleus", "eval_both"):
        per = pd.read_csv(d / f"{sid}-per_image.csv")
        assert len(per) == 5 and per["image_id"].is_unique
    assert pd.read_csv(d / "eval_nucleus-per_image.csv")["dice_nucleus"].mean() == pytest.approx(nucleus["dice"])
    assert "<h3>segmentation@eval_nucleus</h3>" in (d / "report.html").read_text()


def test_merge_metrics_keeps_the_first_section_name():
    from hemaflow.core.runner import merge_metrics

    merged, keys = merge_metrics([
        ("seg", {"segmentation": {"dice": 0.9}}),
        ("clf_eval", {"patient": {"accuracy": 0.8}, "folds": [{"fold": 0}]}),
        ("clf_eval_val", {"patient": {"accuracy": 0.7}, "folds": [{"fold": 1}]}),
        ("mil", {"mil": {"epochs": 3}})])
    assert merged == {"segmentation": {"dice": 0.9}, "patient": {"accuracy": 0.8}, "folds": [{"fold": 0}],
                      "patient@clf_eval_val": {"accuracy": 0.7}, "folds@clf_eval_val": [{"fold": 1}],
                      "mil": {"epochs": 3}}
    assert keys["clf_eval_val"] == ["patient@clf_eval_val", "folds@clf_eval_val"]
