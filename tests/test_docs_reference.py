"""docs/reference.md is checked against the code (every hook, kind base with its inputs and
outputs, artifact type with its members, the RunContext, report items, the MIL contract, the
helpers), and docs/tutorial.md's code blocks are written into a package, installed and run."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hemaflow.core import bases, hookspecs
from hemaflow.core.component import Component, RunContext
from hemaflow.core.kinds import KIND_HOOKS, KIND_SPECS, KINDS, STEP_KINDS
from hemaflow.core.markers import PROJECT
from hemaflow.core.report_items import ReportItems

REPO = Path(__file__).resolve().parents[1]
REFERENCE = (REPO / "docs" / "reference.md").read_text()
TUTORIAL = (REPO / "docs" / "tutorial.md").read_text()


def section(heading: str) -> str:
    """The text under the ``### heading`` of the reference, up to the next heading."""
    m = re.search(rf"^### {re.escape(heading)}\n(.*?)(?=^#{{2,3}} |\Z)", REFERENCE, re.M | re.S)
    assert m, f"docs/reference.md has no section '### {heading}'"
    return m.group(1)


def mentions(text: str, member: str) -> bool:
    return re.search(rf"`{re.escape(member)}\b", text) is not None


def public(cls: type) -> list[str]:
    return [k for k in cls.__dict__ if not k.startswith("_")]


def fmt(ports: dict[str, str]) -> str:
    return ", ".join(f"`{k}: {v}`" for k, v in ports.items()) or "none"


HOOKS = sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, f"{PROJECT}_spec"))


# -- the kinds, once ---------------------------------------------------------------------------
def test_the_kinds_table_matches_the_hookspecs_and_the_bases():
    assert set(KIND_HOOKS.values()) | {"register_artifact_types"} == set(HOOKS)
    assert KINDS == tuple(KIND_HOOKS) and set(STEP_KINDS) < set(KINDS)
    for spec in KIND_SPECS:
        base = bases.base_of(spec.name)
        assert issubclass(base, Component) and base.kind == spec.name and base.__name__ == spec.base
        doc = inspect.getdoc(base)
        for t in {*base.inputs.values(), *base.outputs.values()}:
            assert t.rstrip("?") in doc, f"{base.__name__}'s docstring does not state its type {t}"


def test_the_other_modules_use_the_one_list():
    from hemaflow.core import component, plugins, validate

    assert component.KINDS is KINDS and plugins.KIND_HOOKS is KIND_HOOKS and validate.STEP_KINDS is STEP_KINDS


def test_every_builtin_component_subclasses_its_kinds_base(registry):
    for kind, name, entry in registry.entries():
        assert entry.cls.kind == kind, name
        assert issubclass(entry.cls, bases.base_of(kind)), f"{name} is not a {bases.base_of(kind).__name__}"
        assert isinstance(entry.cls.version, str) and entry.cls.version, name
    assert {"reporter", "tracker", "executor"} <= {k for k, _, _ in registry.entries()}


def test_every_builtin_component_owns_its_version(registry):
    """A version belongs to the component: none is inherited from a shared base, so changing one
    component's results never invalidates another's cache entries."""
    for kind, name, entry in registry.entries():
        owner = next(k for k in entry.cls.__mro__ if "version" in k.__dict__)
        assert owner is entry.cls, f"{name} inherits its version from {owner.__name__}"


def test_a_plain_component_with_a_kind_string_still_registers():
    """Plugins written before the bases existed keep working."""
    from hemaflow import hookimpl
    from hemaflow.core.plugins import build_registry, make_plugin_manager

    class Old(Component):
        kind, name, version = "normalizer", "old_style", "1"
        inputs, outputs = {"images": "ImageSet"}, {"images": "ImageSet"}

    class Plugin:
        @hookimpl
        def register_normalizers(register):
            register(Old)

    reg = build_registry(make_plugin_manager(entry_points=False, extra=[Plugin]))
    assert reg.get("normalizer", "old_style") is Old and not issubclass(Old, bases.Normalizer)


def test_the_bases_are_importable_from_hemaflow():
    import hemaflow

    for spec in KIND_SPECS:
        assert getattr(hemaflow, spec.base) is bases.base_of(spec.name)
        assert spec.base in hemaflow.__all__
    with pytest.raises(AttributeError, match="no attribute 'Segmentor'"):
        hemaflow.Segmentor  # noqa: B018


# -- docs/reference.md ---------------------------------------------------------------------------
@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    rows = [line for line in REFERENCE.splitlines() if line.startswith(f"| `{hook}(register)` |")]
    assert len(rows) == 1, f"docs/reference.md: no hook table row for {hook}"
    kind = next((k for k, h in KIND_HOOKS.items() if h == hook), None)
    if kind is not None:
        assert f"| `{kind}` |" in rows[0] and f"| `{bases.base_of(kind).__name__}` |" in rows[0], rows[0]


@pytest.mark.parametrize("spec", KIND_SPECS, ids=lambda s: s.name)
def test_every_kind_base_is_documented_with_its_inputs_and_outputs(spec):
    base = bases.base_of(spec.name)
    text = section(f"`{base.__name__}`")
    assert f"kind `{spec.name}` · hook `{spec.hook}`" in text
    assert f"- inputs: {fmt(base.inputs)}\n" in text, f"{base.__name__}: inputs are {fmt(base.inputs)}"
    assert f"- outputs: {fmt(base.outputs)}\n" in text, f"{base.__name__}: outputs are {fmt(base.outputs)}"
    for method in ("write", "track", "map"):
        if method in base.__dict__:
            assert mentions(text, method), f"{base.__name__}.{method} is not documented"


def test_every_artifact_type_is_documented_with_its_members(registry):
    assert len(registry.artifact_types) >= 10
    for name, cls in registry.artifact_types.items():
        text = section(f"`{name}`")
        assert f"{cls.__module__}.{cls.__name__}(" in text, f"{name}: say where it lives and how to build it"
        missing = [m for m in public(cls) if not mentions(text, m)]
        assert not missing, f"docs/reference.md, {name}: document {missing}"


@pytest.mark.parametrize("cls, heading", [(Component, "## Components"), (RunContext, "### `RunContext`"),
                                          (ReportItems, "### Report items")])
def test_component_context_and_report_members_are_documented(cls, heading):
    start = REFERENCE.index(heading + "\n")
    nxt = re.search(r"^#{2,3} ", REFERENCE[start + len(heading):], re.M)
    text = REFERENCE[start:start + len(heading) + (nxt.start() if nxt else len(REFERENCE))]
    missing = [m for m in public(cls) if not mentions(text, m)]
    assert not missing, f"docs/reference.md, {heading}: document {missing}"


def test_the_mil_contract_is_documented(registry):
    from hemaflow.plugins.mil import MILAggregator, MILNet

    text = REFERENCE[REFERENCE.index("## MIL aggregators"):REFERENCE.index("## Artifact types")]
    extension = [m for m in public(MILAggregator) if not hasattr(Component, m)]
    assert {"make_net", "extend_schema", "sub_bag_size", "predict", "build_network", "aggregator"} <= set(extension)
    missing = [m for m in extension if not mentions(text, m)]
    assert not missing, f"docs/reference.md, MIL aggregators: document {missing}"
    for member in ("pool", "forward", "self.project", "self.head"):
        assert mentions(text, member), member
    assert hasattr(MILNet, "pool") and "`pool(h, mask) -> (z, scores)`" in text
    for name in registry.components["mil"]:
        assert f"`{name}`" in text, f"built-in aggregator {name} is not listed"


def test_the_helpers_exist_as_documented():
    from hemaflow import testing
    from hemaflow.lib import imageio as io

    text = REFERENCE[REFERENCE.index("## Helpers"):]
    for mod, names in ((io, ("read_image", "read_mask", "write_png", "png_bytes", "to_rgb_uint8", "list_images")),
                       (testing, ("check_component", "parametrize_with_checks", "make", "make_context", "defaults"))):
        for name in names:
            assert callable(getattr(mod, name)), f"{mod.__name__}.{name}"
            assert f"`{name}(" in text, name


# -- docs/tutorial.md ------------------------------------------------------------------------------
def tutorial_files() -> dict[str, str]:
    """The tutorial's code blocks whose first line names a file (``# my_plugin/mil.py``)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"```\w+\n# (\S+)\n(.*?)```", TUTORIAL, re.S)}


def test_the_tutorial_builds_each_component_in_under_40_lines():
    files = tutorial_files()
    assert {"pyproject.toml", "my_plugin/softmax_net.py", "my_plugin/mil.py", "my_plugin/segmenter.py",
            "recipe_mil.yaml", "recipe_segmenter.yaml", "tests/test_conformance.py"} <= set(files)
    lines = {k: len(v.rstrip("\n").splitlines()) for k, v in files.items()}
    assert lines["my_plugin/softmax_net.py"] + lines["my_plugin/mil.py"] < 40, lines
    assert lines["my_plugin/segmenter.py"] < 40, lines


@pytest.fixture(scope="module")
def tutorial_package(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The tutorial's package written out and installed (pip, no network) into a target folder."""
    root = tmp_path_factory.mktemp("tutorial")
    pkg = root / "my-hemaflow-plugin"
    for rel, text in tutorial_files().items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(f"# {rel}\n{text}")
    (pkg / "my_plugin" / "__init__.py").write_text("")  # the tutorial: "(empty)"
    target = root / "site"
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(pkg)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(REPO)]),
               HEMAFLOW_CACHE_DIR=str(root / "cache"), HEMAFLOW_STRICT_PLUGINS="1")
    return pkg, env


def hemaflow(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hemaflow", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_the_tutorial_package_registers_both_components(tutorial_package):
    pkg, env = tutorial_package
    res = hemaflow(env, "plugins", "--json", cwd=pkg)
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert (rows["softmax_pool_mil"]["kind"], rows["blue_threshold"]["kind"]) == ("mil", "segmenter")
    assert rows["softmax_pool_mil"]["distribution"] == "my-hemaflow-plugin"


def test_the_tutorial_recipes_run(tutorial_package):
    pkg, env = tutorial_package
    res = hemaflow(env, "run", "recipe_segmenter.yaml", "--out", "runs/seg", cwd=pkg)
    assert res.returncode == 0, res.stderr
    seg = json.loads((pkg / "runs" / "seg" / "metrics.json").read_text())["segmentation"]
    assert seg["n"] == 8 and seg["dice"] > 0.7 and seg["dice_nucleus"] > 0.8  # measured 0.805 and 0.868
    res = hemaflow(env, "run", "recipe_mil.yaml", "--out", "runs/mil", cwd=pkg)
    assert res.returncode == 0, res.stderr
    metrics = json.loads((pkg / "runs" / "mil" / "metrics.json").read_text())
    assert metrics["mil"]["aggregator"] == "softmax_pool_mil" and metrics["patient"]["n"] == 10
    assert metrics["patient"]["balanced_accuracy"] >= 0.6  # measured 0.8 (AUROC 1.0) on these 10 patients
    pred = (pkg / "runs" / "mil" / "predictions.csv").read_text().splitlines()
    assert len(pred) == 11 and pred[0].startswith("id,level,fold,y_true,y_pred")


def test_the_tutorial_conformance_test_passes(tutorial_package):
    pkg, env = tutorial_package
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_conformance.py"],
                         capture_output=True, text=True, env=env, cwd=pkg)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
