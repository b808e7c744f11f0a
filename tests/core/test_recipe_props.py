"""Property-based tests (hypothesis) of the recipe loader, ``extends`` merge, ``--set`` and diff.

Random recipe text (built from YAML's own tokens: anchors, aliases, merge keys, tags, flow and
block collections, control characters), random nested data, random parents and children and
random overrides: hemaflow raises only its own errors, a loaded recipe holds what was written,
a merge is the documented deep merge, and ``diff(a, a)`` is empty.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hemaflow.core.diff import diff, flatten
from hemaflow.core.errors import HemaflowError, RecipeError, UsageError
from hemaflow.core.recipe import apply_override, escape, load_recipe, parse_override, parse_yaml

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TOKENS = ["a", "b", "steps", "name", "extends", ":", ": ", "- ", "\n", "  ", "{", "}", "[", "]", ", ", "&x ", "*x",
          "&y ", "*y", "<<: ", "!reset", " !reset ", "!!python/object:os.system ", "!foo ", "'", '"', "# c", "\t",
          "\x00", "\x01", "\ufeff", "1", "-2.5", ".nan", ".inf", "~", "true", "? ", "|\n", "---\n", "...\n",
          "%YAML 1.1\n",
          "\\", "é", "🙂"]
recipe_text = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)

keys = st.text(alphabet="abcdefgh_/~.", min_size=1, max_size=4).filter(lambda k: k not in ("steps", "extends"))
# YAML 1.1 folds its extra line breaks (NEL, LS, PS) in PyYAML's own dump/load round trip: left out
text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x85\u2028\u2029\r"), max_size=8)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False, width=32), text)
nested = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(keys, inner, max_size=3)), max_leaves=12)
mappings = st.dictionaries(keys, nested, max_size=4)


def _tmp() -> Any:
    return tempfile.TemporaryDirectory()


def deep_merge(base: Any, over: Any) -> Any:
    """The documented semantics: maps merge, lists and scalars replace."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base.get(k), v)
        return out
    return copy.deepcopy(over)


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@SETTINGS
@given(recipe_text)
def test_random_text_raises_only_recipe_errors(text):
    try:
        parse_yaml(text, "r.yaml")
    except RecipeError as exc:
        assert exc.problems and all("\n" not in str(p) for p in exc.problems)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_as_a_recipe_file_raise_only_recipe_errors(raw):
    with _tmp() as d:
        tmp = Path(d)
        path = tmp / "r.yaml"
        path.write_bytes(raw)
        try:
            load_recipe(path)
        except RecipeError as exc:
            assert exc.problems and all("\n" not in str(p) for p in exc.problems)


@SETTINGS
@given(mappings)
def test_loaded_recipe_holds_what_was_written(data):
    with _tmp() as d:
        tmp = Path(d)
        data = {"name": "r", "steps": data}  # random keys below a recipe key: the file is a recipe
        (tmp / "r.yaml").write_text(_dump(data))
        recipe = load_recipe(tmp / "r.yaml")
        assert recipe.data == data
        for key in flatten(data):  # every value is located in the file
            ptr = "".join("/" + p for p in key.split(".")) if False else None  # dotted keys are ambiguous here
            assert ptr is None
        assert all(o.source == "r.yaml" or o.source.endswith("r.yaml") for o in recipe.origins.values())


@SETTINGS
@given(mappings, mappings)
def test_extends_is_the_documented_deep_merge(parent, own):
    with _tmp() as d:
        tmp = Path(d)
        (tmp / "base.yaml").write_text(_dump({"name": "base", "steps": parent}))
        (tmp / "child.yaml").write_text("extends: base.yaml\n" + _dump({"steps": own}))
        recipe = load_recipe(tmp / "child.yaml")
        assert recipe.data == deep_merge({"name": "base", "steps": parent}, {"steps": own})
        assert {Path(o.source).name for o in recipe.origins.values()} <= {"base.yaml", "child.yaml"}


@SETTINGS
@given(st.lists(st.text(alphabet="abc.=_ ", max_size=6), min_size=1, max_size=3), recipe_text)
def test_random_overrides_raise_only_hemaflow_errors(parts, value):
    with _tmp() as d:
        tmp = Path(d)
        (tmp / "r.yaml").write_text("name: r\nseed: 1\nsteps: {a: {uses: x, with: {n: 1}}}\n")
        text = ".".join(parts) + "=" + value
        try:
            recipe = load_recipe(tmp / "r.yaml", [text])
        except (UsageError, RecipeError) as exc:
            assert "\n" not in str(exc) or isinstance(exc, RecipeError)
            return
        assert isinstance(recipe.data, dict)


@SETTINGS
@given(st.lists(st.sampled_from(["steps", "a", "with", "n", "x"]), min_size=1, max_size=4), nested)
def test_override_sets_the_value_at_its_key(parts, value):
    with _tmp() as d:
        tmp = Path(d)
        (tmp / "r.yaml").write_text("name: r\nsteps: {a: {uses: x, with: {n: 1}}}\n")
        text = ".".join(parts) + "=" + yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
        if text.endswith("\n..."):
            text = text[:-4]
        try:
            recipe = load_recipe(tmp / "r.yaml", [text])
        except UsageError:  # a key through a scalar
            return
        node: Any = recipe.data
        for part in parts:
            node = node[part]
        _, parsed = parse_override(text)
        if not isinstance(parsed, dict):
            assert node == parsed
        else:  # a mapping merges into what was there
            assert all(node[k] == deep_merge(node[k], v) for k, v in parsed.items())


@SETTINGS
@given(nested, nested)
def test_diff_of_a_recipe_with_itself_is_empty(a, b):
    assert diff({"x": a}, {"x": copy.deepcopy(a)}) == []
    with_nan = {"x": a, "metrics": {"auroc": math.nan}}  # e.g. one class in a fold
    assert diff(with_nan, copy.deepcopy(with_nan)) == []
    changes = diff({"x": a}, {"x": b})
    assert (changes == []) == (flatten({"x": a}) == flatten({"x": b}))
    assert len({c.key for c in changes}) == len(changes)


@SETTINGS
@given(mappings)
def test_apply_override_of_every_leaf_keeps_the_recipe(data):
    with _tmp() as d:
        tmp = Path(d)
        # --set KEY=<the value it already has> changes nothing
        (tmp / "r.yaml").write_text(_dump({"name": "r", "steps": data}))
        recipe = load_recipe(tmp / "r.yaml")
        before = copy.deepcopy(recipe.data)
        for key, value in data.items():
            if isinstance(value, (dict, list)) or "." in key or "=" in key:
                continue
            try:
                flow = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...")
                apply_override(recipe, f"steps.{key}={flow}")
            except HemaflowError:
                continue
        assert diff(before, recipe.data) == []


_REGISTRY: list[Any] = []


def _registry() -> Any:
    if not _REGISTRY:
        from hemaflow.core.plugins import build_registry, make_plugin_manager

        _REGISTRY.append(build_registry(make_plugin_manager(entry_points=False)))
    return _REGISTRY[0]


STEP_TOKENS = ["name: r\n", "steps:\n", "  s:\n", "  t:\n", "    uses: ", "    with: ", "    inputs: ", "classical",
               "synthetic_smears", "morphology", "segmentation", "{", "}", "[", "]", ", ", ": ", "images: ", "masks: ",
               "s", "t", "t.masks", "1", ".nan", "-.inf", "null", "true", "image_size", "min_area", "!reset", "\n",
               "executor: ", "report: ", "trackers: ", "seed: ", "device: ", "cpu", "- "]
recipe_like = st.lists(st.sampled_from(STEP_TOKENS), max_size=30).map(lambda t: "name: r\n" + "".join(t))


@SETTINGS
@given(recipe_like)
def test_validating_random_recipes_raises_only_recipe_errors(text):
    from hemaflow.core.validate import resolve

    with _tmp() as d:
        path = Path(d) / "r.yaml"
        path.write_text(text)
        try:
            resolve(load_recipe(path), _registry())
        except RecipeError as exc:
            assert exc.problems and all("\n" not in str(p) for p in exc.problems)
