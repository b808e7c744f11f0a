"""Plugin discovery and the registry: duplicates, typos, broken plugins, restriction, meta-tests."""

from __future__ import annotations

import inspect
import re
import textwrap
import warnings
from pathlib import Path

import pytest

from hemaflow.core import hookspecs
from hemaflow.core.errors import PluginError, UnknownComponentError
from hemaflow.core.plugins import KIND_HOOKS, PluginWarning, build_registry, make_plugin_manager
from tests.example_plugins import dupe_plugin, typo_plugin

REPO = Path(__file__).resolve().parents[2]


def test_duplicate_component_name_names_both_sources():
    pm = make_plugin_manager(entry_points=False, extra=[dupe_plugin])
    with pytest.raises(PluginError) as exc:
        build_registry(pm)
    assert str(exc.value) == (
        "duplicate executor component name 'serial': registered by hemaflow.plugins.executors "
        "(hemaflow.plugins.executors.SerialExecutor) and by tests.example_plugins.dupe_plugin "
        "(tests.example_plugins.dupe_plugin.AnotherSerial)")


def test_hookimpl_without_spec_is_an_error():
    with pytest.raises(PluginError, match="unknown hook 'register_normalisers'"):
        make_plugin_manager(entry_points=False, extra=[typo_plugin])


def test_unknown_component_suggests_close_names(registry):
    with pytest.raises(UnknownComponentError) as exc:
        registry.get("executor", "proceses")
    assert str(exc.value) == "unknown executor component 'proceses'; did you mean 'processes'?"


def _fake_distribution(root: Path, name: str, module_source: str, ep_name: str) -> None:
    """Install a minimal distribution (dist-info + module) into ``root`` the way pip lays it out."""
    mod = f"{name.replace('-', '_')}_mod"
    (root / f"{mod}.py").write_text(textwrap.dedent(module_source))
    dist = root / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[hemaflow]\n{ep_name} = {mod}\n")


@pytest.fixture()
def third_party(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "broken-plugin", "raise ImportError('needs libfoo')\n", "broken")
    _fake_distribution(tmp_path, "good-plugin", '''
        from hemaflow import hookimpl
        from hemaflow.plugins.executors import SerialExecutor

        class Lazy(SerialExecutor):
            """Serial, but from a third party."""
            name = "lazy"

        @hookimpl
        def register_executors(register):
            register(Lazy)
    ''', "good")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_broken_third_party_plugin_warns_and_continues(third_party, monkeypatch):
    monkeypatch.delenv("HEMAFLOW_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("HEMAFLOW_LOAD_PLUGINS", raising=False)
    with pytest.warns(PluginWarning) as record:
        reg = build_registry(make_plugin_manager())
    messages = [str(w.message) for w in record]
    assert any(m.startswith("plugin 'broken' (broken_plugin_mod) failed to load: ImportError: needs libfoo")
               for m in messages)
    entry = reg.components["executor"]["lazy"]
    assert (entry.distribution, entry.version) == ("good-plugin", "1.0")


def test_strict_mode_makes_broken_plugin_an_error(third_party, monkeypatch):
    monkeypatch.setenv("HEMAFLOW_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="plugin 'broken' .* failed to load: ImportError: needs libfoo"):
        make_plugin_manager()


def test_load_plugins_env_restricts_third_party(third_party, monkeypatch):
    monkeypatch.setenv("HEMAFLOW_LOAD_PLUGINS", "good-plugin")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)  # the broken one is not even imported
        reg = build_registry(make_plugin_manager())
    assert "lazy" in reg.components["executor"]
    monkeypatch.setenv("HEMAFLOW_LOAD_PLUGINS", "")
    reg = build_registry(make_plugin_manager())
    assert "lazy" not in reg.components["executor"]
    assert "serial" in reg.components["executor"]


# -- meta-tests: the hook surface stays documented, tested and pinned ---------------------------
HOOKS = sorted(n for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, "hemaflow_spec"))


def test_hook_signatures_are_pinned():
    assert HOOKS == sorted(["register_artifact_types", *KIND_HOOKS.values()])
    for name in HOOKS:
        assert str(inspect.signature(getattr(hookspecs, name))) == "(register: 'Register') -> 'None'", name


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_documented(name):
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert len(doc) > 60, f"{name} needs a docstring stating its contract"


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_registers_conforming_components(name):
    """Call each hook like the registry does; every built-in it registers passes the public checker."""
    from hemaflow.core.artifacts import Artifact
    from hemaflow.testing import check_component

    pm = make_plugin_manager(entry_points=False)
    collected: list[type] = []
    getattr(pm.hook, name)(register=collected.append)
    assert collected, f"no built-in plugin registers anything through {name}"
    for cls in collected:
        if name == "register_artifact_types":
            assert issubclass(cls, Artifact) and cls.type_name
        else:
            assert cls.kind == {v: k for k, v in KIND_HOOKS.items()}[name]
            check_component(cls)
