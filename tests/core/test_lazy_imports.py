"""A light start: ``validate``, ``diff``, ``plugins`` and a fully cached rerun do not import torch,
timm, matplotlib, scikit-learn or segmentation_models_pytorch (seconds of imports each).

Each command runs in a fresh ``python -c`` process that prints which heavy modules it ended up
with. The list of timm's model names (what ``validate`` checks a backbone against instead of
importing timm) is written first into the test's cache directory, as the first validate on a
machine does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "timm", "matplotlib", "sklearn", "segmentation_models_pytorch", "torchvision")

PROBE = f"""
import json, sys
from hemaflow.core.cli import main
code = main(sys.argv[1:])
print(json.dumps({{"code": code, "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""

TINY = """\
name: lazy_tiny
seed: 0
device: auto
steps:
  data:
    uses: synthetic_smears
    with: {patients_per_class: 2, images_per_patient: 1, image_size: 128}
  split:
    uses: patient_kfold
    inputs: {images: data}
    with: {k: 2}
  segment:
    uses: classical
    inputs: {images: data}
  postprocess:
    uses: morphology
    inputs: {masks: segment}
  cells:
    uses: cell_crops
    inputs: {images: data, masks: postprocess}
    with: {crop_size: 32}
  features:
    uses: cell_features
    inputs: {cells: cells}
  classify:
    uses: sklearn_classifier
    inputs: {features: features, split: split}
    with: {model: logistic_regression}
  evaluate:
    uses: classification
    inputs: {predictions: classify, split: split}
report: {uses: html}
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    from hemaflow.lib import backbones as model_names

    path = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("HEMAFLOW_CACHE_DIR", str(path))
    mp.setattr(model_names, "_MEMO", {})
    try:
        assert "resnet50" in model_names.known_timm_models()  # writes the per-version list
    finally:
        mp.undo()
    assert list((path / "meta").glob("timm-*-models.txt"))
    return path


def probe(cache_dir: Path, *args: str) -> dict:
    env = {"HEMAFLOW_CACHE_DIR": str(cache_dir), "PATH": "/usr/bin:/bin", "HOME": str(cache_dir)}
    res = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("recipe", ["recipes/mil_multimodal.yaml", "recipes/classify_base.yaml",
                                    "recipes/wbc_types_tabular_attention.yaml"])
def test_validate_imports_no_heavy_library(cache_dir, recipe):
    out = probe(cache_dir, "validate", recipe)
    assert out == {"code": 0, "heavy": []}


def test_plugins_and_diff_import_no_heavy_library(cache_dir):
    assert probe(cache_dir, "plugins", "--json") == {"code": 0, "heavy": []}
    out = probe(cache_dir, "diff", "recipes/mil_multimodal.yaml", "recipes/mil_baseline.yaml")
    assert out == {"code": 1, "heavy": []}  # they differ: exit code 1


def test_a_fully_cached_rerun_imports_no_heavy_library(cache_dir, tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    first = probe(cache_dir, "run", str(recipe), "--out", str(tmp_path / "a"))
    # the classifier and the evaluator's figures need these when the steps run
    assert first["code"] == 0 and {"sklearn", "matplotlib"} <= set(first["heavy"])
    again = probe(cache_dir, "run", str(recipe), "--out", str(tmp_path / "b"))
    assert again == {"code": 0, "heavy": []}
    steps = json.loads((tmp_path / "b" / "provenance.json").read_text())["steps"]
    assert steps and all(s["cache_hit"] for s in steps)
    assert (tmp_path / "b" / "report.html").is_file()
