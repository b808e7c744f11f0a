from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real blood-smear data beside the repository (read in place, never copied)."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture()
def registry():
    """A fresh registry of built-in components (no third-party entry points)."""
    from hemaflow.core.plugins import build_registry, make_plugin_manager

    return build_registry(make_plugin_manager(entry_points=False))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own step cache unless it sets HEMAFLOW_CACHE_DIR itself."""
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
