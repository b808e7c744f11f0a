"""Recipe loading: YAML locations, duplicate keys, extends, overrides; exact error text."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hemaflow.core.errors import RecipeError, UsageError
from hemaflow.core.recipe import load_recipe


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def problems(exc: pytest.ExceptionInfo) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_duplicate_key_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "r.yaml", """
        name: r
        seed: 1
        steps:
          a: {uses: x}
        seed: 2
    """)
    with pytest.raises(RecipeError) as exc:
        load_recipe("r.yaml")
    assert problems(exc) == ["r.yaml:5:1: /seed: duplicate key 'seed' (first defined at line 2)"]


def test_malformed_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "r.yaml", """
        name: r
        steps:
          a: {uses: x
    """)
    with pytest.raises(RecipeError) as exc:
        load_recipe("r.yaml")
    [msg] = problems(exc)
    assert msg.startswith("r.yaml:4:1: /: malformed YAML: while parsing a flow mapping, expected ',' or '}'")


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as exc:
        load_recipe("nope.yaml")
    assert problems(exc) == ["nope.yaml: /: file not found"]


def test_extends_cycle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\nname: b\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe("a.yaml")
    assert problems(exc) == ["b.yaml:1:10: /extends: extends cycle: a.yaml -> b.yaml -> a.yaml"]


def test_extends_missing_parent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "a.yaml", "name: a\nextends: base.yaml\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe("a.yaml")
    assert problems(exc) == ["a.yaml:2:10: /extends: extended recipe 'base.yaml' not found (looked for base.yaml)"]


def test_extends_deep_merge_and_origins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    write(tmp_path / "base.yaml", """
        name: base
        seed: 3
        steps:
          mil:
            uses: attention
            with: {epochs: 10, sizes: [1, 2], lr: 0.1}
    """)
    write(tmp_path / "sub" / "child.yaml", """
        extends: ../base.yaml
        name: child
        steps:
          mil:
            with:
              sizes: [5]
    """)
    r = load_recipe("sub/child.yaml", ["steps.mil.with.epochs=3", "steps.mil.with.extra={a: 1}"])
    assert r.data == {"name": "child", "seed": 3,
                      "steps": {"mil": {"uses": "attention",
                                        "with": {"epochs": 3, "sizes": [5], "lr": 0.1, "extra": {"a": 1}}}}}
    assert str(r.origins["/seed"]) == "base.yaml:2:7"
    assert str(r.origins["/steps/mil/with/sizes"]) == "sub/child.yaml:6:14"
    assert str(r.origins["/steps/mil/with/lr"]) == "base.yaml:6:43"
    assert str(r.origins["/steps/mil/with/epochs"]) == "--set steps.mil.with.epochs=3"
    assert str(r.origins["/steps/mil/with/extra/a"]) == "--set steps.mil.with.extra={a: 1}"
    assert r.files == ["sub/child.yaml", "base.yaml"]


def test_extends_list_later_parent_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "p1.yaml", "name: p1\nseed: 1\ndevice: cpu\n")
    write(tmp_path / "p2.yaml", "name: p2\nseed: 2\n")
    write(tmp_path / "c.yaml", "extends: [p1.yaml, p2.yaml]\nname: c\n")
    r = load_recipe("c.yaml")
    assert r.data == {"name": "c", "seed": 2, "device": "cpu"}


def test_reset_drops_inherited_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "base.yaml", """
        name: base
        report: {uses: html}
        steps:
          encoder: {uses: instance_encoder, with: {epochs: 3}}
          mil:
            uses: gated_attention_mil
            inputs: {embeddings: encoder, features: radiomics}
            with: {epochs: 10, encoder: {backbone: a}}
    """)
    write(tmp_path / "child.yaml", """
        extends: base.yaml
        name: child
        unknown: !reset                 # nothing to reset: ignored
        steps:
          encoder: !reset
          mil:
            inputs: {embeddings: !reset null}   # in flow style a tag needs a value after it
            with: {encoder: !reset {}, new: {a: 1, b: !reset ""}}
    """)
    r = load_recipe("child.yaml", ["report=!reset", "steps.mil.with.epochs=!reset", "steps.nothing.here=!reset"])
    assert r.data == {"name": "child",
                      "steps": {"mil": {"uses": "gated_attention_mil", "inputs": {"features": "radiomics"},
                                        "with": {"new": {"a": 1}}}}}
    # the origins of removed values are gone; the kept ones still point at their files
    assert not [p for p in r.origins if p.startswith(("/steps/encoder", "/report", "/steps/mil/inputs/embeddings",
                                                      "/steps/mil/with/epochs", "/steps/mil/with/encoder"))]
    assert str(r.origins["/steps/mil/inputs/features"]) == "base.yaml:7:45"


def test_reset_misuse_is_reported_with_its_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "r.yaml", "name: r\nsizes: [1, !reset null]\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe("r.yaml")
    assert problems(exc) == ["r.yaml:2:12: /sizes/1: !reset removes a key; it cannot be a list item"]
    write(tmp_path / "r.yaml", "name: r\nseed: !reset 5\n!reset : 1\nsteps: !reset {a: 1}\nwith: !reset {}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe("r.yaml")
    assert problems(exc) == ["r.yaml:3:1: /: !reset goes after a key (key: !reset), not in place of one"]


def test_reset_with_a_value_replaces_instead_of_merging(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "base.yaml", """
        name: base
        seed: 1
        steps:
          seg: {uses: classical, with: {min_area: 10, max_area: 99}}
          mil: {uses: mean_mil, with: {epochs: 3, lr: 0.1}}
    """)
    write(tmp_path / "child.yaml", """
        extends: base.yaml
        seed: !reset 7
        steps:
          seg: {with: !reset {min_area: 20}}
          mil: {with: {epochs: !reset, lr: !reset}, inputs: {a: !reset, b: x}}
    """)
    r = load_recipe("child.yaml", ["steps.mil.with=!reset {hidden: 4}"])
    assert r.data["seed"] == 7
    assert r.data["steps"]["seg"]["with"] == {"min_area": 20}
    assert r.data["steps"]["mil"]["with"] == {"hidden": 4}
    assert r.data["steps"]["mil"]["inputs"] == {"b": "x"}  # `!reset` complete in flow style: {a: !reset}
    assert str(r.origins["/steps/seg/with/min_area"]) == "child.yaml:4:33"
    assert "/steps/seg/with/max_area" not in r.origins
    assert str(r.origins["/steps/mil/with/hidden"]) == "--set steps.mil.with=!reset {hidden: 4}"


def test_changing_uses_drops_the_parameters_the_new_component_lacks(tmp_path, monkeypatch, registry, capsys):
    from hemaflow.core.cli import main
    from hemaflow.core.validate import resolve

    monkeypatch.chdir(tmp_path)
    tiny = Path(__file__).resolve().parent / "recipes" / "tiny.yaml"
    write(tmp_path / "base.yaml", f"""
        extends: {tiny}
        steps:
          segment: {{with: {{min_contrast: 5, on_error: skip}}}}
    """)
    write(tmp_path / "child.yaml", """
        extends: base.yaml
        steps:
          segment: {uses: ground_truth}
    """)
    res = resolve(load_recipe("child.yaml"), registry)
    # classical's min_contrast means nothing to ground_truth: dropped; on_error both take: kept
    assert res.data["steps"]["segment"]["with"] == {"missing": "error", "on_error": "skip"}
    assert res.recipe.notes == ["/steps/segment/with: dropped min_contrast (base.yaml:3:34): parameters of "
                                "'classical', which 'ground_truth' does not take (child.yaml:3:19 changes uses)"]
    assert str(res.recipe.origins["/steps/segment/with/on_error"]) == "base.yaml:3:47"
    assert main(["resolve", "--origins", "child.yaml"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert 'steps.segment.with.on_error: "skip"    # base.yaml:3:47' in out
    assert out[-1] == "# note: " + res.recipe.notes[0]
    # --set the same, whatever the order; a key given again after the change is the user's: an error
    res = resolve(load_recipe("base.yaml", ["steps.segment.with.on_error=stop", "steps.segment.uses=ground_truth"]),
                  registry)
    assert res.data["steps"]["segment"]["with"] == {"missing": "error", "on_error": "stop"}
    with pytest.raises(RecipeError) as exc:
        resolve(load_recipe("child.yaml", ["steps.segment.with.min_contrast=3"]), registry)
    assert "unknown key 'min_contrast'" in str(exc.value)
    # the same uses: parameters merge as before
    write(tmp_path / "same.yaml", "extends: base.yaml\nsteps: {segment: {uses: classical, with: {window: 3}}}\n")
    res = resolve(load_recipe("same.yaml"), registry)
    params = res.data["steps"]["segment"]["with"]
    assert (params["min_contrast"], params["window"]) == (5, 3)
    assert res.recipe.notes == []


def test_override_errors(tmp_path):
    write(tmp_path / "r.yaml", "name: r\nseed: 1\n")
    with pytest.raises(UsageError) as exc:
        load_recipe(tmp_path / "r.yaml", ["seed"])
    assert str(exc.value) == "--set 'seed': expected KEY=VALUE, e.g. --set steps.mil.with.epochs=3"
    with pytest.raises(UsageError) as exc:
        load_recipe(tmp_path / "r.yaml", ["seed.x=1"])
    assert str(exc.value) == "--set 'seed.x=1': seed is not a mapping"
    with pytest.raises(UsageError) as exc:
        load_recipe(tmp_path / "r.yaml", ["seed=[1, !reset]"])
    assert str(exc.value) == "--set 'seed=[1, !reset]': !reset removes a key; it cannot be a list item"


def test_recipes_cannot_construct_python_objects(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "r.yaml", "name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe("r.yaml")
    [msg] = problems(exc)
    assert msg == ("r.yaml:1:7: /: malformed YAML: unsupported YAML tag "
                   "'tag:yaml.org,2002:python/object/apply:os.system' (recipes hold plain data only)")
