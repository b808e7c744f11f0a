"""The MIL recipes end to end, shrunk with --set: headline, an ablation reusing the cache, the
per-cell export layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hemaflow.core.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
MIL_RECIPES = sorted(RECIPES.glob("mil_*.yaml"))
TINY = ["--set", "steps.data.with.classes=[AML, NORMAL]", "--set", "steps.data.with.patients_per_class=3",
        "--set", "steps.data.with.images_per_patient=1", "--set", "steps.data.with.image_size=128",
        "--set", "steps.split.with.k=3", "--set", "steps.radiomics.with.classes=[firstorder]",
        "--set", "steps.encoder.with.backbone=test_convnext", "--set", "steps.encoder.with.image_size=32",
        "--set", "steps.encoder.with.epochs=1", "--set", "steps.mil.with.epochs=2", "--executor", "serial"]


def provenance(run_dir: Path) -> dict:
    return json.loads((run_dir / "provenance.json").read_text())


def test_end_to_end_recipe_runs_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "cache"))
    tiny = []
    for flag, value in zip(TINY[::2], TINY[1::2]):  # the recipe has no `encoder` step to shrink
        tiny += [] if value.startswith("steps.encoder.") else [flag, value]
    args = [*tiny, "--set", "steps.mil.with.encoder={backbone: test_convnext, image_size: 32}"]
    assert main(["run", str(RECIPES / "mil_end_to_end.yaml"), "--out", str(tmp_path / "run"), *args]) == 0
    pred = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert len(pred) == 6 and set(pred["level"]) == {"patient"}
    assert "encoder" not in {s["id"] for s in provenance(tmp_path / "run")["steps"]}


def test_all_mil_recipes_validate():
    assert len(MIL_RECIPES) == 14
    assert main(["validate", *map(str, MIL_RECIPES)]) == 0


def test_headline_then_ablation_reuses_cached_instances(tmp_path):
    assert main(["run", str(RECIPES / "mil_multimodal.yaml"), "--out", str(tmp_path / "a"), *TINY]) == 0
    pred = pd.read_csv(tmp_path / "a" / "predictions.csv")
    assert (pred["level"] == "patient").all() and {"prob_AML", "prob_NORMAL"} <= set(pred.columns)
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["patient"]["n"] == len(pred) and metrics["mil"]["aggregator"] == "gated_attention_mil"
    assert "MIL" in (tmp_path / "a" / "report.html").read_text()
    assert main(["run", str(RECIPES / "mil_mean.yaml"), "--out", str(tmp_path / "b"), *TINY]) == 0
    hits = {s["id"]: s["cache_hit"] for s in provenance(tmp_path / "b")["steps"]}
    assert hits.pop("mil") is False and hits.pop("evaluate") is False
    assert all(hits.values()), hits  # data, split, segmentation, cells, radiomics, encoder: cached


def test_cell_export_layout(tmp_path, registry):
    """A lab's export: <root>/<patient>/<cell>.png plus labels.csv, from synthetic cell crops."""
    from hemaflow.lib import imageio as io
    from hemaflow.testing import make, make_context

    images = make(registry.get("dataset", "synthetic_smears"), classes=["AML", "NORMAL"], patients_per_class=3,
                  images_per_patient=2, image_size=128, seed=1).run(make_context(tmp_path / "gen"))["images"]
    from tests.plugins.seg_fixtures import field

    root = tmp_path / "export"
    for i, (_, row) in enumerate(images.table.iterrows()):
        d = root / row["patient_id"] / "run1"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(2):  # two single-cell crops per "field": a centre cell and a red cell
            r = 16 if row["label"] == "AML" else 12
            crop, _ = field(size=(64, 64), wbcs=((32, 32, r),), rbcs=((8, 56, 6),), seed=2 * i + k)
            io.write_png(d / f"{row['image_id']}_{k}.png", crop)
    labels = images.table.groupby("patient_id")["label"].first().rename_axis("patient").rename("diagnosis")
    labels.to_csv(tmp_path / "labels.csv")
    args = ["--set", f"steps.data.with.root={root}", "--set", f"steps.data.with.labels={tmp_path / 'labels.csv'}",
            "--set", "steps.split.with.k=3", "--set", "steps.encoder.with.backbone=test_convnext",
            "--set", "steps.encoder.with.image_size=32", "--set", "steps.encoder.with.epochs=1",
            "--set", "steps.mil.with.epochs=2", "--set", "steps.cells.with.crop_size=48", "--executor", "serial"]
    assert main(["run", str(RECIPES / "mil_cell_export.yaml"), "--out", str(tmp_path / "run"), *args]) == 0
    pred = pd.read_csv(tmp_path / "run" / "predictions.csv")
    assert sorted(pred["id"]) == sorted(labels.index)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["mil"]["n_instances"] == 4 * 6 and metrics["mil"]["bag_size_max"] == 4
    assert "Single-cell crops: 24 of 24 images kept" in (tmp_path / "run" / "report.html").read_text()
