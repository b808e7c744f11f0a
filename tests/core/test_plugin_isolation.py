"""One broken third-party plugin never takes hemaflow down: every kind of failure is a PluginWarning
naming the distribution, the other plugins (and the broken plugin's good components) still load,
``hemaflow plugins`` lists the broken one, and HEMAFLOW_STRICT_PLUGINS=1 makes each an error."""

from __future__ import annotations

import json
import textwrap
import warnings
from pathlib import Path

import pytest

from hemaflow.core.errors import PluginError
from hemaflow.core.plugins import PluginWarning, build_registry, make_plugin_manager, reset_registry

GOOD = '''
    from hemaflow import hookimpl
    from hemaflow.plugins.executors import SerialExecutor

    class Lazy(SerialExecutor):
        """Serial, but from a third party."""
        name = "lazy"

    @hookimpl
    def register_executors(register):
        register(Lazy)
'''

# name -> (module source, what the warning must say)
BROKEN = {
    "import-error": ("raise ImportError('needs libfoo')\n",
                     "plugin 'ep_import_error' (import_error_mod) failed to load: ImportError: needs libfoo"),
    "wrong-hook": ('''
        from hemaflow import hookimpl
        from hemaflow.core.component import Component

        class Grey(Component):
            kind = "normalizer"
            name = "grey_wrong_hook"
            outputs = {"images": "ImageSet"}

        class Fine(Component):
            kind = "segmenter"
            name = "fine_segmenter"
            inputs = {"images": "ImageSet"}
            outputs = {"masks": "MaskSet"}

        @hookimpl
        def register_segmenters(register):
            register(Grey)
            register(Fine)
    ''', "plugin 'ep_wrong_hook' registered Grey (kind 'normalizer') through the 'segmenter' hook; "
         "register it from register_normalizers"),
    "duplicate": ('''
        from hemaflow import hookimpl
        from hemaflow.plugins.executors import SerialExecutor

        class MySerial(SerialExecutor):
            name = "serial"

        @hookimpl
        def register_executors(register):
            register(MySerial)
    ''', "duplicate executor component name 'serial': registered by hemaflow.plugins.executors "
         "(hemaflow.plugins.executors.SerialExecutor) and by ep_duplicate (duplicate_mod.MySerial, distribution "
         "duplicate 1.0); the one from 'ep_duplicate' is left out (rename it)"),
    "not-a-component": ('''
        from hemaflow import hookimpl

        def grey(images):
            return images

        @hookimpl
        def register_normalizers(register):
            register(grey)
    ''', "plugin 'ep_not_a_component' registered <function grey at"),
    "hook-typo": ('''
        from hemaflow import hookimpl

        @hookimpl
        def register_normalisers(register):
            pass
    ''', "plugin 'ep_hook_typo' (hook_typo_mod) failed to load: unknown hook 'register_normalisers'; "
         "did you mean 'register_normalizers'?"),
    "sys-exit": ("import sys\nsys.exit('no licence file')\n",
                 "plugin 'ep_sys_exit' (sys_exit_mod) failed to load: SystemExit: no licence file"),
    "bad-signature": ('''
        from hemaflow import hookimpl

        @hookimpl
        def register_normalizers(reg):
            pass
    ''', "plugin 'ep_bad_signature' (bad_signature_mod) failed to load: PluginValidationError: Plugin "
         "'ep_bad_signature' for hook 'register_normalizers'"),
    "hook-raises": ('''
        from hemaflow import hookimpl

        @hookimpl
        def register_classifiers(register):
            raise RuntimeError("no GPU found")
    ''', "plugin 'ep_hook_raises' failed in register_classifiers: RuntimeError: no GPU found"),
    "artifact-clash": ('''
        from hemaflow import hookimpl
        from hemaflow.core.artifacts import TableArtifact

        class ImageSet(TableArtifact):
            type_name = "ImageSet"

        @hookimpl
        def register_artifact_types(register):
            register(ImageSet)
    ''', "plugin 'ep_artifact_clash' registered artifact type 'ImageSet', which "
         "hemaflow.plugins.artifacts.ImageSet already is; rename its type_name"),
}


def fake_distribution(root: Path, name: str, source: str) -> str:
    """Lay out a distribution (dist-info + module) in ``root`` as pip does; return its entry-point name."""
    mod = f"{name.replace('-', '_')}_mod"
    ep = f"ep_{name.replace('-', '_')}"
    (root / f"{mod}.py").write_text(textwrap.dedent(source))
    dist = root / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[hemaflow]\n{ep} = {mod}\n")
    return ep


@pytest.fixture()
def site(tmp_path, monkeypatch):
    """A folder on sys.path holding a good third-party plugin; tests add broken ones beside it."""
    monkeypatch.delenv("HEMAFLOW_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("HEMAFLOW_LOAD_PLUGINS", raising=False)
    fake_distribution(tmp_path, "good-plugin", GOOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_plugin_is_a_warning_naming_its_distribution(site, case):
    source, expected = BROKEN[case]
    fake_distribution(site, case, source)
    with pytest.warns(PluginWarning) as record:
        reg = build_registry(make_plugin_manager())
    messages = [str(w.message) for w in record if issubclass(w.category, PluginWarning)]
    assert len(messages) == 1, messages
    assert messages[0].startswith(expected), messages[0]
    assert messages[0].endswith(f" (distribution {case} 1.0; left out, the rest of hemaflow works; "
                                "HEMAFLOW_STRICT_PLUGINS=1 makes this an error)"), messages[0]
    # the rest works: the good plugin and every built-in
    assert reg.components["executor"]["lazy"].distribution == "good-plugin"
    assert reg.components["executor"]["serial"].cls.__module__ == "hemaflow.plugins.executors"
    assert reg.artifact_types["ImageSet"].__module__ == "hemaflow.plugins.artifacts"
    assert [(b.plugin, b.distribution) for b in reg.broken] == [(f"ep_{case.replace('-', '_')}", f"{case} 1.0")]


def test_the_broken_plugins_good_components_still_load(site):
    fake_distribution(site, "wrong-hook", BROKEN["wrong-hook"][0])
    with pytest.warns(PluginWarning):
        reg = build_registry(make_plugin_manager())
    assert "fine_segmenter" in reg.components["segmenter"]
    assert "grey_wrong_hook" not in reg.components["normalizer"]
    assert "grey_wrong_hook" not in reg.components["segmenter"]


def test_two_third_party_plugins_with_one_name_keep_the_first(site):
    clash = GOOD.replace("class Lazy", "class Lazy2").replace("register(Lazy)", "register(Lazy2)")
    fake_distribution(site, "other-plugin", clash)
    with pytest.warns(PluginWarning, match="duplicate executor component name 'lazy'") as record:
        reg = build_registry(make_plugin_manager())
    (w,) = [w for w in record if issubclass(w.category, PluginWarning)]
    entry = reg.components["executor"]["lazy"]
    assert f"the one from {entry.source!r}" not in str(w.message)  # the kept one is not the one left out
    assert "is left out (rename it)" in str(w.message)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_strict_mode_makes_every_failure_an_error(site, case, monkeypatch):
    source, expected = BROKEN[case]
    fake_distribution(site, case, source)
    monkeypatch.setenv("HEMAFLOW_STRICT_PLUGINS", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        with pytest.raises(PluginError) as exc:
            build_registry(make_plugin_manager())
    assert str(exc.value).startswith(expected.split(" (distribution")[0].split(";")[0])


def test_cli_keeps_working_and_lists_the_broken_plugin(site, capsys):
    from hemaflow.core.cli import main

    for case in ("import-error", "wrong-hook", "hook-typo"):
        fake_distribution(site, case, BROKEN[case][0])
    reset_registry()
    try:
        assert main(["plugins"]) == 0
        out, err = capsys.readouterr()
        assert "lazy" in out and "good-plugin" in out and "fine_segmenter" in out
        assert "broken plugin: import-error 1.0 (entry point 'ep_import_error'): plugin 'ep_import_error' " \
               "(import_error_mod) failed to load: ImportError: needs libfoo" in out
        assert "broken plugin: hook-typo 1.0" in out and "broken plugin: wrong-hook 1.0" in out
        assert err.count("warning: ") == 3 and "(distribution import-error 1.0; left out" in err
        assert main(["plugins", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert {"lazy", "fine_segmenter", "serial"} <= {r["name"] for r in rows}
        recipe = Path(__file__).resolve().parents[2] / "recipes" / "mil_multimodal.yaml"
        assert main(["validate", str(recipe)]) == 0
    finally:
        reset_registry()
