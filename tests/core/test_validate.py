"""Validation against the composed schema: every problem at once, exact text, suggestions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import jsonschema
import pytest

from hemaflow.core.errors import RecipeError
from hemaflow.core.recipe import load_recipe
from hemaflow.core.schema import compose_schema
from hemaflow.core.validate import resolve


def check(tmp_path: Path, text: str, registry, overrides=()) -> list[str]:
    (tmp_path / "r.yaml").write_text(textwrap.dedent(text).lstrip())
    with pytest.raises(RecipeError) as exc:
        resolve(load_recipe("r.yaml", list(overrides)), registry)
    return [str(p) for p in exc.value.problems]


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_unknown_top_level_key(tmp_path, registry):
    assert check(tmp_path, """
        name: r
        sed: 1
        steps:
          data: {uses: synthetic_smears}
    """, registry) == ["r.yaml:2:1: /sed: unknown key 'sed'; did you mean 'seed'?"]


def test_unknown_component_with_suggestion(tmp_path, registry):
    assert check(tmp_path, """
        name: r
        steps:
          data:
            uses: synthetic_smear
    """, registry) == ["r.yaml:4:11: /steps/data/uses: unknown component 'synthetic_smear'; "
                       "did you mean 'synthetic_smears'?"]


def test_wrong_parameter_type_inside_a_step(tmp_path, registry):
    assert check(tmp_path, """
        name: r
        steps:
          data:
            uses: synthetic_smears
            with:
              patients_per_class: two
    """, registry) == ['r.yaml:6:27: /steps/data/with/patients_per_class: must be an integer; got "two"']


def test_parameter_out_of_range_from_override(tmp_path, registry):
    assert check(tmp_path, """
        name: r
        steps:
          data: {uses: synthetic_smears}
    """, registry, ["steps.data.with.image_size=8"]) == [
        "--set steps.data.with.image_size=8: /steps/data/with/image_size: must be >= 48; got 8"]


def test_all_problems_at_once_with_suggestions(tmp_path, registry):
    assert check(tmp_path, """
        name: r
        device: gpu
        steps:
          data:
            uses: synthetic_smears
            with: {patients_per_clas: 3}
          cells:
            uses: cell_crops
            inputs: {images: dta, maskz: data}
    """, registry) == [
        "r.yaml:2:9: /device: must be one of \"auto\", \"cpu\", \"cuda\"; got \"gpu\"",
        "r.yaml:6:12: /steps/data/with/patients_per_clas: unknown key 'patients_per_clas'; "
        "did you mean 'patients_per_class' or 'pixels_per_um'?",
        "r.yaml:9:22: /steps/cells/inputs/images: no step 'dta'; did you mean 'data'?",
        "r.yaml:9:27: /steps/cells/inputs/maskz: cell_crops has no input 'maskz'; did you mean 'masks'?",
        "r.yaml:9:13: /steps/cells/inputs: cell_crops needs input 'masks' (MaskSet); add inputs: {masks: <step id>}",
    ]


def test_input_type_mismatch(tmp_path, registry):
    assert check(tmp_path, """
        name: r
        steps:
          data: {uses: synthetic_smears}
          cells:
            uses: cell_crops
            inputs: {images: data, masks: data}
    """, registry) == ["r.yaml:6:35: /steps/cells/inputs/masks: input 'masks' of cell_crops must be MaskSet; "
                       "'data' gives ImageSet"]


def test_defaults_are_filled_and_located(tmp_path, registry):
    (tmp_path / "r.yaml").write_text("name: r\nsteps:\n  data: {uses: synthetic_smears}\n")
    res = resolve(load_recipe("r.yaml"), registry)
    assert res.data["seed"] == 0 and res.data["device"] == "auto"
    assert res.data["steps"]["data"]["with"]["patients_per_class"] == 8
    assert str(res.recipe.locate("/steps/data/with/patients_per_class")) == "default"
    assert [s.id for s in res.steps] == ["data"]


def test_composed_schema_is_valid_and_catches_step_typos(registry):
    schema = compose_schema(registry)
    jsonschema.Draft202012Validator.check_schema(schema)
    v = jsonschema.Draft202012Validator(schema)
    good = {"name": "r", "steps": {"data": {"uses": "synthetic_smears", "with": {"patients_per_class": 2}}}}
    bad = {"name": "r", "steps": {"data": {"uses": "synthetic_smears", "with": {"patients_per_clas": 2}}}}
    assert not list(v.iter_errors(good))
    assert list(v.iter_errors(bad))


def test_component_check_params_runs_after_the_schema(tmp_path, registry):
    """Problems a schema cannot see (an unknown timm model) are reported by validate too."""
    assert check(tmp_path, """
        name: r
        steps:
          data: {uses: synthetic_smears}
          seg: {uses: classical, inputs: {images: data}}
          cells: {uses: cell_crops, inputs: {images: data, masks: seg}}
          emb:
            uses: embeddings
            inputs: {cells: cells}
            with: {model: resnet1}
    """, registry) == ["r.yaml:9:19: /steps/emb/with/model: unknown timm model 'resnet1'; "
                       "did you mean 'resnet18' or 'resnet61q' or 'resnet51q'?"]
