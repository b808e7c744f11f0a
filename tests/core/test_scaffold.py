"""``hemaflow new-plugin``: every kind scaffolds a package that passes its own tests unchanged, and its
recipe validates (and, for a MIL aggregator, runs) with the component found through its entry point.

The packages are not pip-installed here (slow, and it would change the venv): each gets the
``.dist-info`` pip would write (METADATA + entry_points.txt) beside its sources, and goes on
PYTHONPATH. ``.ci/run`` does the real ``pip install -e`` of one package per kind.
"""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hemaflow.core.scaffold
from hemaflow.core.cli import main
from hemaflow.core.kinds import KINDS
from hemaflow.core.scaffold import Names, new_plugin

REPO = Path(__file__).resolve().parents[2]


def fake_install(pkg: Path, names: Names) -> None:
    """Write the dist-info ``pip install`` would, so importlib.metadata finds the entry point."""
    dist = pkg / f"{names.package}-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {names.distribution}\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(f"[hemaflow]\n{names.entry_point} = {names.package}.plugin\n")


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("plugins")
    pkgs = {kind: new_plugin(f"lab-{kind}", kind, out) for kind in KINDS}
    for kind, pkg in pkgs.items():
        fake_install(pkg, Names(f"lab-{kind}", kind))
    return pkgs


def run(args: list[str], pkgs: dict[str, Path], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([*map(str, pkgs.values()), str(REPO)])
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=path, HEMAFLOW_STRICT_PLUGINS="1", **env))


def test_every_kind_passes_its_own_tests_unchanged(packages):
    tests = [str(p / "tests") for p in packages.values()]
    res = run(["-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib", *tests], packages,
              next(iter(packages.values())).parent)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    passed = int(res.stdout.strip().splitlines()[-1].split(" passed")[0].split()[-1])
    assert passed >= 13 * 8 and " skipped" not in res.stdout.splitlines()[-1], res.stdout[-500:]


def test_every_recipe_validates_with_the_plugin_found_through_its_entry_point(packages, tmp_path):
    res = run(["-m", "hemaflow", "validate", *[str(p / "recipe.yaml") for p in packages.values()]], packages, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count(": ok") == len(KINDS)
    listed = run(["-m", "hemaflow", "plugins", "--json"], packages, tmp_path)
    rows = {(r["kind"], r["name"]): r for r in json.loads(listed.stdout)}
    for kind in KINDS:
        assert rows[(kind, f"lab_{kind}")]["distribution"] == f"hemaflow-lab-{kind}"


def test_the_mil_recipe_runs(packages, tmp_path):
    res = run(["-m", "hemaflow", "run", str(packages["mil"] / "recipe.yaml"), "--out", str(tmp_path / "run")],
              packages, tmp_path, HEMAFLOW_CACHE_DIR=str(tmp_path / "cache"))
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["mil"]["aggregator"] == "lab_mil" and metrics["patient"]["n"] > 0
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())
    assert prov["plugins"]["lab_mil"]["distribution"] == "hemaflow-lab-mil"


def test_the_package_layout_and_entry_point(packages):
    tomllib = pytest.importorskip("tomllib")
    pkg = packages["segmenter"]
    project = tomllib.loads((pkg / "pyproject.toml").read_text())
    assert project["project"]["name"] == "hemaflow-lab-segmenter"
    assert project["project"]["entry-points"]["hemaflow"] == {"lab_segmenter": "hemaflow_lab_segmenter.plugin"}
    source = (pkg / "hemaflow_lab_segmenter" / "plugin.py").read_text()
    assert "class LabSegmenter(Segmenter):" in source and 'name = "lab_segmenter"' in source
    assert "def register_segmenters(register):\n    register(LabSegmenter)" in source
    assert "Template" not in source and "template_component" not in source
    assert "uses: lab_segmenter" in (pkg / "recipe.yaml").read_text()
    assert "parametrize_with_checks([LabSegmenter])" in (pkg / "tests" / "test_conformance.py").read_text()


@pytest.mark.parametrize("name,expected", [
    ("otsu", ("hemaflow-otsu", "hemaflow_otsu", "otsu", "Otsu")),
    ("hemaflow-lab-otsu", ("hemaflow-lab-otsu", "hemaflow_lab_otsu", "lab_otsu", "LabOtsu")),
    ("lab_otsu2", ("hemaflow-lab-otsu2", "hemaflow_lab_otsu2", "lab_otsu2", "LabOtsu2")),
])
def test_names(name, expected):
    n = Names(name, "segmenter")
    assert (n.distribution, n.package, n.component, n.cls) == expected


@pytest.mark.parametrize("args,message", [
    (["Lab Otsu", "--kind", "segmenter"], "error: plugin name 'Lab Otsu' must be lower case letters and digits, "
                                          "words joined by - or _ (e.g. lab-otsu)"),
    (["otsu", "--kind", "segmentor"], "error: unknown kind 'segmentor'; did you mean 'segmenter'? (kinds: "
                                      + ", ".join(KINDS) + ")"),
    (["classical", "--kind", "segmenter"], "error: a built-in segmenter is already called 'classical'; "
                                           "choose another NAME"),
])
def test_usage_errors_exit_2(args, message, tmp_path, capsys):
    assert main(["new-plugin", *args, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not any(tmp_path.iterdir())


def test_an_existing_package_is_never_overwritten(tmp_path, capsys):
    assert main(["new-plugin", "otsu", "--kind", "segmenter", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'hemaflow-otsu'}\n")
    plugin = tmp_path / "hemaflow-otsu" / "hemaflow_otsu" / "plugin.py"
    plugin.write_text("# my work\n")
    assert main(["new-plugin", "otsu", "--kind", "normalizer", "--out", str(tmp_path)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert plugin.read_text() == "# my work\n"


def test_every_kind_has_a_template():
    from importlib import resources

    templates = {p.name[:-3] for p in resources.files("hemaflow.scaffold_templates").iterdir()
                 if p.name.endswith(".py") and p.name != "__init__.py"}
    assert templates == set(KINDS)


def test_docstring_example_runs():
    result = doctest.testmod(hemaflow.core.scaffold)
    assert result.attempted >= 2 and result.failed == 0
