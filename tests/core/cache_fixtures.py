"""Fixtures of the cache tests: one clean run of the tiny recipe, copied per test."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from hemaflow.core.cli import main

RECIPES = Path(__file__).parent / "recipes"


def provenance(run_dir: Path) -> dict:
    return json.loads((run_dir / "provenance.json").read_text())


def entry_of(cache: Path, step: str) -> Path:
    for info in (cache / "steps").glob("*/*/step.json"):
        if json.loads(info.read_text()).get("step") == step:
            return info.parent
    raise AssertionError(f"no entry for step {step}")


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """One clean run of the tiny recipe: its cache and run directory (copied by each test)."""
    root = tmp_path_factory.mktemp("golden")
    old = os.environ.get("HEMAFLOW_CACHE_DIR")
    os.environ["HEMAFLOW_CACHE_DIR"] = str(root / "cache")
    try:
        assert main(["run", str(RECIPES / "tiny.yaml"), "--out", str(root / "run")]) == 0
    finally:
        if old is None:
            os.environ.pop("HEMAFLOW_CACHE_DIR")
        else:
            os.environ["HEMAFLOW_CACHE_DIR"] = old
    return root


@pytest.fixture()
def cache(golden, tmp_path, monkeypatch) -> Path:
    """A copy of the golden cache, used by this test's runs."""
    path = tmp_path / "cache"
    shutil.copytree(golden / "cache", path, symlinks=True)
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(path))
    return path


def rerun(tmp_path: Path, name: str = "again") -> tuple[int, Path]:
    out = tmp_path / name
    return main(["run", str(RECIPES / "tiny.yaml"), "--out", str(out)]), out
