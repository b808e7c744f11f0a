"""hemaflow compare: recipe differences beside metrics, in the terminal and as HTML."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from hemaflow.core.compare import load_runs, metric_rows, print_comparison, recipe_changes, render_comparison_html
from hemaflow.core.diff import MISSING
from hemaflow.core.errors import DataError, UsageError

RECIPE = {"name": "abl", "seed": 0, "steps": {"data": {"uses": "synthetic_smears", "with": {"patients_per_class": 4}},
                                              "split": {"uses": "patient_kfold", "with": {"k": 5}}}}


def write_run(path: Path, recipe: dict, metrics: dict, status: str = "ok") -> Path:
    path.mkdir(parents=True)
    (path / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "provenance.json").write_text(json.dumps({"status": status, "seconds": 12.5,
                                                      "started": "2026-11-27T20:00:00+00:00"}))
    return path


@pytest.fixture()
def two_runs(tmp_path):
    a = write_run(tmp_path / "a", RECIPE, {
        "patient": {"accuracy": 0.75, "balanced_accuracy": 0.7, "n": 8, "balanced_accuracy_ci": [0.5, 0.9],
                    "per_class": {"ALL": {"f1": 0.5}}, "aggregated_from": "image"},
        "folds": [{"fold": 0, "patient": {"accuracy": 0.5, "n": 4}}, {"fold": 1, "patient": {"accuracy": 1.0, "n": 4}}]})
    b_recipe = json.loads(json.dumps(RECIPE))
    b_recipe["steps"]["split"]["with"]["k"] = 3
    b = write_run(tmp_path / "b", b_recipe, {
        "patient": {"accuracy": 0.875, "balanced_accuracy": 0.65, "n": 8, "balanced_accuracy_ci": [0.4, 0.8]},
        "segmentation": {"dice": 0.9, "n": 3}})
    return load_runs([a, b])


def test_recipe_changes_show_exactly_the_differing_key(two_runs):
    assert recipe_changes(two_runs) == [("steps.split.with.k", [5, 3])]
    assert recipe_changes(two_runs[:1]) == []


def test_metric_rows_deltas_and_cis(two_runs):
    rows = {(r.section, r.metric): r for r in metric_rows(two_runs)}
    assert list(rows) == [("patient", "accuracy"), ("patient", "balanced_accuracy"), ("patient", "n"),
                          ("segmentation", "dice"), ("segmentation", "n"), ("folds (mean ± sd)", "patient.accuracy")]
    ba = rows[("patient", "balanced_accuracy")]
    assert ba.values == [0.7, 0.65] and ba.cis == [[0.5, 0.9], [0.4, 0.8]]
    assert ba.deltas()[1] == pytest.approx(-0.05)
    assert rows[("segmentation", "dice")].values == [None, 0.9]
    assert rows[("segmentation", "dice")].deltas() == [None, None]
    folds = rows[("folds (mean ± sd)", "patient.accuracy")]
    assert folds.values == [0.75, None] and folds.spread[0] == pytest.approx(0.353553, abs=1e-5)


def test_print_comparison(two_runs):
    console = Console(record=True, width=200)
    print_comparison(console, two_runs)
    out = console.export_text()
    diff_table = out.split("Recipe differences")[1].split("Metrics")[0]
    assert re.findall(r"steps\.\S+", diff_table) == ["steps.split.with.k"]
    assert re.search(r"│ steps\.split\.with\.k\s+│ 5\s+│ 3\s+│", diff_table)
    assert "0.7000 [0.5000, 0.9000]" in out
    assert "0.6500 [0.4000, 0.8000] (-0.0500)" in out
    assert "0.8750 (+0.1250)" in out
    assert "0.7500 ± 0.3536" in out
    assert "Metrics (Δ vs a)" in out


def test_identical_runs(tmp_path):
    a = write_run(tmp_path / "x" / "run", RECIPE, {})
    b = write_run(tmp_path / "y" / "run", RECIPE, {})
    runs = load_runs([a, b])
    assert [r.label for r in runs] == ["x/run", "y/run"]
    console = Console(record=True, width=120)
    print_comparison(console, runs)
    out = console.export_text()
    assert "Recipe differences: none (the resolved recipes are identical)" in out
    assert "Metrics: none of these runs has metrics" in out
    page = render_comparison_html(runs)
    assert "The resolved recipes are identical." in page and "None of these runs has metrics." in page


def test_render_comparison_html(two_runs):
    page = render_comparison_html(two_runs)
    assert page.startswith("<!DOCTYPE html>")
    assert re.findall(r"<h2>([^<]+)</h2>", page) == ["Runs", "Recipe differences", "Metrics"]
    diff_section = page.split('id="recipe-differences"')[1].split("</section>")[0]
    assert re.findall(r"<tr><th><code>([^<]+)</code></th>", diff_section) == ["steps.split.with.k"]
    assert "<td><code>5</code></td><td><code>3</code></td>" in diff_section
    assert '0.6500 <span class="ci">[0.4000, 0.8000]</span> <span class="down">(-0.0500)</span>' in page
    assert '<span class="up">(+0.1250)</span>' in page
    assert "<script" not in page and "http" not in page


def test_load_runs_errors(tmp_path):
    with pytest.raises(UsageError, match="nope: no such run directory"):
        load_runs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"empty: not a hemaflow run directory \(no recipe.resolved.yaml\)"):
        load_runs([tmp_path / "empty"])
    bad = write_run(tmp_path / "bad", RECIPE, {})
    (bad / "metrics.json").write_text("{oops")
    with pytest.raises(DataError, match="metrics.json: invalid JSON at line 1"):
        load_runs([bad])
    with pytest.raises(UsageError, match="compare needs at least one run directory"):
        load_runs([])


def test_missing_key_shows_absent(tmp_path):
    a = write_run(tmp_path / "a", RECIPE, {})
    r = json.loads(json.dumps(RECIPE))
    r["steps"]["split"]["with"]["seed"] = 7
    b = write_run(tmp_path / "b", r, {})
    runs = load_runs([a, b])
    assert recipe_changes(runs) == [("steps.split.with.seed", [MISSING, 7])]
    assert "<td><code>(absent)</code></td><td><code>7</code></td>" in render_comparison_html(runs)


TINY = """\
name: tiny_seg
description: tiny segmentation run
seed: 0
steps:
  data:
    uses: synthetic_smears
    with: {classes: [ALL, NORMAL], patients_per_class: 2, images_per_patient: 1, image_size: 128}
  seg:
    uses: classical
    inputs: {images: data}
  eval:
    uses: segmentation
    inputs: {masks: seg, images: data}
    with: {partition: all, n_overlays: 2}
"""


def test_compare_two_real_runs_cli(tmp_path, capsys):
    """Two real runs that differ in one --set key: compare shows exactly that key."""
    from hemaflow.core.cli import main

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    assert main(["run", str(recipe), "--out", str(tmp_path / "r1")]) == 0
    assert main(["run", str(recipe), "--out", str(tmp_path / "r2"), "--set", "steps.seg.with.opening_radius=4"]) == 0
    capsys.readouterr()
    html_file = tmp_path / "compare.html"
    assert main(["compare", str(tmp_path / "r1"), str(tmp_path / "r2"), "--html", str(html_file)]) == 0
    out = capsys.readouterr().out
    runs = load_runs([tmp_path / "r1", tmp_path / "r2"])
    assert recipe_changes(runs) == [("steps.seg.with.opening_radius", [2, 4])]
    assert re.findall(r"steps\.\S+", out.split("Recipe differences")[1].split("Metrics")[0]) == \
        ["steps.seg.with.opening_radius"]
    assert "dice" in out and "segmentation" in out
    page = html_file.read_text()
    assert re.findall(r"<tr><th><code>([^<]+)</code></th>", page) == ["steps.seg.with.opening_radius"]
