"""The command line as users and scripts see it: output format and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hemaflow.core.cli import main

RECIPES = Path(__file__).parent / "recipes"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _cwd(monkeypatch):
    monkeypatch.chdir(REPO)


def test_validate_ok_and_problem_lines(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsed: 1\nsteps:\n  data:\n    uses: synthetic_smears\n    with: {image_size: big}\n")
    assert main(["validate", "tests/core/recipes/tiny.yaml", str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out == "tests/core/recipes/tiny.yaml: ok\n"
    assert err.splitlines() == [
        f"{bad}:2:1: /sed: unknown key 'sed'; did you mean 'seed'?",
        f'{bad}:6:24: /steps/data/with/image_size: must be an integer; got "big"',
    ]


def test_validate_with_overrides_and_reset(capsys):
    # a --set is checked as `run --set` would apply it; `!reset` drops a step that others still use
    assert main(["validate", "recipes/mil_multimodal.yaml", "--set", "steps.mil.with.epochs=3"]) == 0
    assert capsys.readouterr().out == "recipes/mil_multimodal.yaml: ok\n"
    assert main(["validate", "recipes/mil_multimodal.yaml", "--set", "steps.encoder=!reset"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("recipes/mil_multimodal.yaml:")
    assert err[0].endswith("/steps/mil/inputs/embeddings: no step 'encoder'")
    assert main(["validate", "recipes/mil_multimodal.yaml", "--set", "steps.encoder=!reset",
                 "--set", "steps.mil.inputs.embeddings=!reset"]) == 0


def test_resolve_origins(capsys):
    assert main(["resolve", "tests/core/recipes/tiny_nucleus.yaml", "--origins", "--set", "seed=7"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert 'name: "tiny_nucleus"    # tests/core/recipes/tiny_nucleus.yaml:2:7' in lines
    assert "seed: 7    # --set seed=7" in lines
    assert 'steps.evaluate.with.target: "nucleus"    # tests/core/recipes/tiny_nucleus.yaml:5:20' in lines
    assert 'steps.evaluate.uses: "segmentation"    # tests/core/recipes/tiny.yaml:13:11' in lines
    assert any(line.startswith("steps.segment.with.") and line.endswith("# default") for line in lines)


def test_diff_prints_only_differing_keys(capsys):
    assert main(["diff", "tests/core/recipes/tiny.yaml", "tests/core/recipes/tiny_nucleus.yaml"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        'name: "tiny" -> "tiny_nucleus"    # tests/core/recipes/tiny.yaml:1:7 -> tests/core/recipes/tiny_nucleus.yaml:2:7',
        'steps.evaluate.with.target: "cell" -> "nucleus"    # tests/core/recipes/tiny.yaml:15:36 -> tests/core/recipes/tiny_nucleus.yaml:5:20',
    ]
    assert main(["diff", "tests/core/recipes/tiny.yaml", "tests/core/recipes/tiny.yaml"]) == 0
    assert capsys.readouterr().out == "no differences\n"


def test_diff_json(capsys):
    assert main(["diff", "tests/core/recipes/tiny.yaml", "tests/core/recipes/tiny_nucleus.yaml", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(d["key"], d["old"], d["new"], d["change"]) for d in data] == [
        ("name", "tiny", "tiny_nucleus", "changed"), ("steps.evaluate.with.target", "cell", "nucleus", "changed")]


def test_plugins_json_lists_kind_name_distribution_version_schema(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    r = by_name["synthetic_smears"]
    assert (r["kind"], r["distribution"]) == ("dataset", "hemaflow")
    assert r["schema"]["properties"]["patients_per_class"]["type"] == "integer"


def test_schema_prints_the_composed_schema(capsys):
    import jsonschema

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert "dataset.synthetic_smears" in schema["$defs"]


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run"])
    assert exc.value.code == 2
    assert main(["run", "tests/core/recipes/tiny.yaml", "--set", "seed"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_unknown_override_key_is_an_error_like_in_a_file(capsys):
    assert main(["run", "tests/core/recipes/tiny.yaml", "--set", "steps.data.with.patients=3"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == ("--set steps.data.with.patients=3: /steps/data/with/patients: unknown key 'patients'; "
                           "did you mean 'patients_per_class'?")


def test_missing_recipe_file_exits_1_without_traceback(capsys):
    assert main(["run", "recipes/nope.yaml"]) == 1
    assert capsys.readouterr().err == "recipes/nope.yaml: /: file not found\n"


def test_python_dash_m_works_the_same():
    res = subprocess.run([sys.executable, "-m", "hemaflow", "validate", "tests/core/recipes/tiny.yaml"],
                         capture_output=True, text=True, cwd=REPO)
    assert (res.returncode, res.stdout) == (0, "tests/core/recipes/tiny.yaml: ok\n")
    assert "Traceback" not in res.stderr


def test_debug_lines_only_with_verbose(tmp_path):
    from hemaflow.core.component import RunContext

    for verbose, expected in ((False, []), (True, ["[s] epoch 1: loss 0.5"])):
        seen: list[str] = []
        ctx = RunContext(step_id="s", workdir=tmp_path / str(verbose), log=seen.append, verbose=verbose)
        ctx.debug("epoch 1: loss 0.5")
        assert seen == expected
    res = subprocess.run([sys.executable, "-m", "hemaflow", "run", "--help"], capture_output=True, text=True, cwd=REPO)
    assert "-v, --verbose" in res.stdout


def test_run_several_recipes_shares_the_cache_and_keeps_going_after_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "cache"))
    nucleus = RECIPES / "tiny_nucleus.yaml"
    broken = tmp_path / "broken.yaml"  # valid recipe whose data folder does not exist: fails at run time
    broken.write_text("name: broken\nsteps:\n  data:\n    uses: class_folders\n    with: {root: " + str(tmp_path / "nope") + "}\n")
    code = main(["run", str(RECIPES / "tiny.yaml"), str(broken), str(nucleus), "--out", str(tmp_path / "runs")])
    out, err = capsys.readouterr()
    assert code == 3  # one run failed; the others still ran
    assert f"error: {tmp_path / 'nope'}: data folder not found" in err
    for name in ("tiny", "tiny_nucleus"):
        assert (tmp_path / "runs" / name / "metrics.json").exists()
    prov = json.loads((tmp_path / "runs" / "tiny_nucleus" / "provenance.json").read_text())
    hits = {s["id"]: s["cache_hit"] for s in prov["steps"]}
    assert hits["data"] and hits["segment"]  # finished steps of the first run are reused
    assert "3 runs" in out and out.count(" ok ") == 2 and "failed" in out
    sweep = json.loads((tmp_path / "runs" / "sweep.json").read_text())
    assert [(r["recipe"].rsplit("/", 1)[-1], r["status"]) for r in sweep] == [
        ("tiny.yaml", "ok"), ("broken.yaml", "failed"), ("tiny_nucleus.yaml", "ok")]
    assert all(r["seconds"] > 0 for r in sweep)


def test_run_several_recipes_validates_all_before_running_any(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsteps:\n  data:\n    uses: synthetic_smear\n")
    assert main(["run", str(RECIPES / "tiny.yaml"), str(bad), "--out", str(tmp_path / "runs")]) == 1
    assert "did you mean 'synthetic_smears'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
