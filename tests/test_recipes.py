"""Every shipped recipe validates, and ablations differ from their base only where they say."""

from __future__ import annotations

from pathlib import Path

import pytest

from hemaflow.core.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_validates(recipe, capsys):
    assert main(["validate", str(recipe.relative_to(REPO))]) == 0, capsys.readouterr().err


def test_headline_recipe_exists_and_needs_no_data_argument():
    text = (REPO / "recipes" / "mil_multimodal.yaml").read_text()
    assert "uses: synthetic_smears" in text


def test_diff_of_two_ablations_prints_only_the_differing_keys(capsys):
    assert main(["diff", "recipes/mil_multimodal.yaml", "recipes/mil_mean.yaml"]) == 1
    keys = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    # the aggregator changes; its own parameters (defaults of the other component) follow it
    assert "steps.mil.uses" in keys
    assert all(k in ("name", "description") or k.startswith("steps.mil.") for k in keys), keys


def test_every_recipe_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    missing = [p.name for p in RECIPES if f"`recipes/{p.name}`" not in readme]
    assert not missing, f"add these recipes to the README's recipe catalogue: {missing}"
