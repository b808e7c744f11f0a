"""Plugin manager factory and the component registry.

Built-in components live in :data:`hemaflow.plugins.DEFAULT_PLUGINS` and are registered exactly
like third-party plugins, which are discovered through the ``hemaflow`` entry-point group.

Environment:
    HEMAFLOW_LOAD_PLUGINS: comma-separated distribution or entry-point names; when set, only
        those third-party plugins are loaded (empty string: none).
    HEMAFLOW_STRICT_PLUGINS: when ``1``, a broken third-party plugin is an error instead of a
        warning.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import pluggy

from hemaflow.core import hookspecs
from hemaflow.core.artifacts import CORE_TYPES, Artifact
from hemaflow.core.component import Component
from hemaflow.core.errors import PluginError, UnknownComponentError
from hemaflow.core.kinds import KIND_HOOKS, KINDS
from hemaflow.core.markers import PROJECT

ENTRY_POINT_GROUP = "hemaflow"

class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded; hemaflow continues without it."""


@dataclass
class Entry:
    """A registered component class and where it came from."""

    cls: type[Component]
    source: str  # plugin name, e.g. "hemaflow.plugins.segment" or "hemaflow-cellpose"
    distribution: str
    version: str


@dataclass
class Registry:
    """Components per kind and artifact types by name."""

    components: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    artifact_types: dict[str, type[Artifact]] = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)

    def get(self, kind: str, name: str) -> type[Component]:
        """Return the component class ``name`` of ``kind`` or raise UnknownComponentError."""
        try:
            return self.components[kind][name].cls
        except KeyError:
            raise UnknownComponentError(kind, name, self.components.get(kind, {})) from None

    def find(self, name: str) -> Entry:
        """Return the entry registered under ``name`` in any kind."""
        for kind in KINDS:
            if name in self.components[kind]:
                return self.components[kind][name]
        raise UnknownComponentError("any", name, self.all_names())

    def all_names(self) -> list[str]:
        return [n for kind in KINDS for n in self.components[kind]]

    def entries(self):
        for kind in KINDS:
            for name, entry in sorted(self.components[kind].items()):
                yield kind, name, entry

    def artifact_type(self, name: str) -> type[Artifact]:
        try:
            return self.artifact_types[name]
        except KeyError:
            raise PluginError(f"unknown artifact type {name!r}") from None


_DISTS: dict[str, tuple[str, str]] = {}


def _dist_of(plugin_name: str) -> tuple[str, str]:
    if plugin_name in _DISTS:
        return _DISTS[plugin_name]
    from hemaflow import __version__

    return "hemaflow", __version__


def _third_party_entry_points() -> list[md.EntryPoint]:
    eps = list(md.entry_points(group=ENTRY_POINT_GROUP))
    wanted = os.environ.get("HEMAFLOW_LOAD_PLUGINS")
    if wanted is None:
        return eps
    names = {w.strip() for w in wanted.split(",") if w.strip()}
    return [ep for ep in eps if ep.name in names or (ep.dist and ep.dist.metadata["name"] in names)]


def make_plugin_manager(*, builtins: bool = True, entry_points: bool = True, extra: list[Any] = ()) -> pluggy.PluginManager:
    """Build a fresh plugin manager (tests use this; the CLI uses :func:`get_registry`)."""
    from hemaflow.plugins import DEFAULT_PLUGINS

    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    if builtins:
        for modname in DEFAULT_PLUGINS:
            try:
                module = importlib.import_module(modname)
            except Exception as exc:
                raise PluginError(f"built-in plugin {modname!r} failed to import: {type(exc).__name__}: {exc}") from exc
            pm.register(module, name=modname)
    strict = os.environ.get("HEMAFLOW_STRICT_PLUGINS") == "1"
    if entry_points:
        for ep in _third_party_entry_points():
            if pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
                if ep.dist is not None:
                    _DISTS[ep.name] = (ep.dist.metadata["name"], ep.dist.version)
            except (Exception, SystemExit) as exc:  # a broken plugin, even sys.exit at import: CLI goes on
                msg = f"plugin {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
                if strict:
                    raise PluginError(msg) from exc
                warnings.warn(msg + " (continuing without it; HEMAFLOW_STRICT_PLUGINS=1 makes this an error)",
                              PluginWarning, stacklevel=2)
    for plugin in extra:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return pm


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every register hook and collect the components; duplicates are errors."""
    reg = Registry()
    for t in CORE_TYPES:
        reg.artifact_types[t.type_name] = t
    strict = os.environ.get("HEMAFLOW_STRICT_PLUGINS") == "1"

    for kind_or_artifacts, hookname in [("artifact", "register_artifact_types"), *((k, h) for k, h in KIND_HOOKS.items())]:
        hook = getattr(pm.hook, hookname)
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name
            dist, version = _dist_of(plugin_name)

            def register(obj: Any, _kind: str = kind_or_artifacts, _src: str = plugin_name,
                         _dist: str = dist, _ver: str = version) -> None:
                if _kind == "artifact":
                    if not (isinstance(obj, type) and issubclass(obj, Artifact)):
                        raise PluginError(f"plugin {_src!r} registered {obj!r}, which is not an Artifact subclass")
                    reg.artifact_types[obj.type_name] = obj
                    return
                if not (isinstance(obj, type) and issubclass(obj, Component)):
                    raise PluginError(f"plugin {_src!r} registered {obj!r}, which is not a Component subclass")
                if obj.kind != _kind:
                    raise PluginError(f"plugin {_src!r} registered {obj.__name__} (kind {obj.kind!r}) "
                                      f"through the {_kind!r} hook")
                if not obj.name:
                    raise PluginError(f"plugin {_src!r} registered {obj.__name__} without a name")
                existing = reg.components[_kind].get(obj.name)
                if existing is not None and existing.cls is not obj:
                    raise PluginError(
                        f"duplicate {_kind} component name {obj.name!r}: registered by "
                        f"{existing.source} ({existing.cls.__module__}.{existing.cls.__qualname__}) and by "
                        f"{_src} ({obj.__module__}.{obj.__qualname__})")
                reg.components[_kind][obj.name] = Entry(obj, _src, _dist, _ver)

            try:
                impl.function(register)
            except PluginError:
                raise
            except Exception as exc:
                if plugin_name.startswith("hemaflow.plugins") or strict:
                    raise PluginError(f"plugin {plugin_name!r} failed in {hookname}: "
                                      f"{type(exc).__name__}: {exc}") from exc
                msg = f"plugin {plugin_name!r} failed in {hookname}: {type(exc).__name__}: {exc}"
                reg.broken.append(msg)
                warnings.warn(msg, PluginWarning, stacklevel=2)
    return reg


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """Return the process-wide registry, built lazily once."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = build_registry(make_plugin_manager())
    return _REGISTRY


def reset_registry() -> None:
    """Forget the process-wide registry (tests)."""
    global _REGISTRY
    _REGISTRY = None
    sys.modules.pop("hemaflow._registry_cache", None)
