"""The example third-party plugin package: installed with pip, discovered through its entry
point, and used by a real recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "examples" / "hemaflow-example-plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(PKG)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert list(target.glob("hemaflow_example_plugin-0.2.0.dist-info"))
    return target


def hemaflow(installed: Path, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(installed), str(REPO)]))
    return subprocess.run([sys.executable, "-m", "hemaflow", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_plugin_is_discovered_with_its_distribution(installed):
    res = hemaflow(installed, "plugins", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["grey_world"]["kind"] == "normalizer"
    assert (rows["grey_world"]["distribution"], rows["grey_world"]["version"]) == ("hemaflow-example-plugin", "0.2.0")
    assert rows["colour_stats"]["kind"] == "features"


def test_recipe_runs_with_the_third_party_components(installed, tmp_path):
    res = hemaflow(installed, "run", str(PKG / "example.yaml"), "--out", str(tmp_path / "run"))
    assert res.returncode == 0, res.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["patient"]["n"] > 0 and 0.0 <= metrics["patient"]["balanced_accuracy"] <= 1.0
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["plugins"]["grey_world"]["distribution"] == "hemaflow-example-plugin"


def test_restricting_plugins_hides_it(installed, tmp_path):
    env_restricted = dict(os.environ, HEMAFLOW_LOAD_PLUGINS="")
    res = subprocess.run([sys.executable, "-m", "hemaflow", "validate", str(PKG / "example.yaml")],
                         capture_output=True, text=True, cwd=REPO,
                         env=dict(env_restricted, PYTHONPATH=os.pathsep.join([str(installed), str(REPO)])))
    assert res.returncode == 1
    assert "unknown component 'grey_world'" in res.stderr


def test_components_pass_the_public_checker(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    from hemaflow.testing import check_component
    from hemaflow_example.plugin import ColourStats, GreyWorld

    check_component(GreyWorld)
    check_component(ColourStats)
