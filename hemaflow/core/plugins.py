"""Plugin manager factory and the component registry.

Built-in components live in :data:`hemaflow.plugins.DEFAULT_PLUGINS` and are registered exactly
like third-party plugins, which are discovered through the ``hemaflow`` entry-point group.

A third-party plugin is isolated: whatever fails in it (its import, even ``SystemExit``; a hook
name no hookspec has; a component registered through another kind's hook, not a Component, or
under a name or artifact type name that is taken; a hook that raises) is a :class:`PluginWarning`
naming the plugin and its distribution, and only what is broken is left out
(:attr:`Registry.broken`). A built-in plugin's failure raises
:class:`~hemaflow.core.errors.PluginError` instead, and so does a bad registration (wrong hook,
duplicate, not a Component) by a plugin passed in code (``extra=``).

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


@dataclass(frozen=True)
class BrokenPlugin:
    """A third-party plugin (or one of its components) that hemaflow left out, and why."""

    plugin: str  # entry-point name
    distribution: str  # e.g. "hemaflow-cellpose 0.3.0", or the entry point's value when unknown
    message: str

    def __str__(self) -> str:
        return self.message


STRICT_HINT = "HEMAFLOW_STRICT_PLUGINS=1 makes this an error"


def _strict() -> bool:
    return os.environ.get("HEMAFLOW_STRICT_PLUGINS") == "1"


def _ep_distribution(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ep.value
    return f"{dist.metadata['name']} {dist.version}"


def _report_broken(broken: list[BrokenPlugin], plugin: str, distribution: str, message: str,
                   exc: BaseException | None = None) -> None:
    """Warn about (or, in strict mode, raise for) a broken third-party plugin; record it."""
    if _strict():
        raise PluginError(message) from exc
    broken.append(BrokenPlugin(plugin, distribution, message))
    warnings.warn(f"{message} (distribution {distribution}; left out, the rest of hemaflow works; {STRICT_HINT})",
                  PluginWarning, stacklevel=3)


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """Hook implementations of ``plugin`` that match no hookspec (a typo like register_normalisers)."""
    names = []
    for name, caller in vars(pm.hook).items():
        if getattr(caller, "spec", True) is None and any(
                i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls()):
            names.append(name)
    return sorted(names)


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
    broken: list[BrokenPlugin] = field(default_factory=list)

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


def _unknown_hook_message(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, [*KIND_HOOKS.values(), "register_artifact_types"], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown hook {name!r}{hint}"


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
    broken: list[BrokenPlugin] = []
    third_party: set[str] = set()  # entry-point plugin names: their failures are isolated
    pm.hemaflow_broken = broken  # type: ignore[attr-defined]  # read by build_registry
    pm.hemaflow_third_party = third_party  # type: ignore[attr-defined]
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
                _report_broken(broken, ep.name, _ep_distribution(ep), msg, exc)
                continue
            unknown = _unknown_hooks(pm, plugin)
            if unknown:  # checked per plugin, so one typo does not fail pm.check_pending() for all
                pm.unregister(plugin)
                msg = f"plugin {ep.name!r} ({ep.value}) failed to load: " + "; ".join(
                    _unknown_hook_message(u) for u in unknown)
                _report_broken(broken, ep.name, _ep_distribution(ep), msg)
                continue
            third_party.add(ep.name)
    for plugin in extra:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    return pm


def _registration_problem(obj: Any, kind: str, src: str, hook: str) -> str | None:
    """What is wrong with ``register(obj)`` called from ``hook`` of plugin ``src``, or None."""
    if kind == "artifact":
        if not (isinstance(obj, type) and issubclass(obj, Artifact)):
            return f"plugin {src!r} registered {obj!r}, which is not an Artifact subclass"
        return None
    if not (isinstance(obj, type) and issubclass(obj, Component)):
        return f"plugin {src!r} registered {obj!r}, which is not a Component subclass"
    if obj.kind != kind:
        right = KIND_HOOKS.get(obj.kind)
        hint = f"; register it from {right}" if right else f"; kind must be one of {', '.join(KINDS)}"
        return f"plugin {src!r} registered {obj.__name__} (kind {obj.kind!r}) through the {kind!r} hook{hint}"
    if not obj.name:
        return f"plugin {src!r} registered {obj.__name__} without a name"
    return None


def build_registry(pm: pluggy.PluginManager) -> Registry:
    """Call every register hook and collect the components; duplicates are errors."""
    reg = Registry()
    for t in CORE_TYPES:
        reg.artifact_types[t.type_name] = t
    strict = _strict()
    third_party: set[str] = getattr(pm, "hemaflow_third_party", set())
    reg.broken.extend(getattr(pm, "hemaflow_broken", []))

    def isolate(plugin_name: str, message: str) -> bool:
        """Warn about a third-party plugin's bad registration and return True (skip it), or
        return False for built-ins, plugins passed in code and strict mode (then it is raised)."""
        if plugin_name not in third_party or strict:
            return False
        dist, version = _dist_of(plugin_name)
        _report_broken(reg.broken, plugin_name, f"{dist} {version}", message)
        return True

    def ours(src: str) -> str:
        return "" if src not in third_party else f", distribution {' '.join(_dist_of(src))}"

    for kind_or_artifacts, hookname in [("artifact", "register_artifact_types"), *((k, h) for k, h in KIND_HOOKS.items())]:
        hook = getattr(pm.hook, hookname)
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name
            dist, version = _dist_of(plugin_name)

            def register(obj: Any, _kind: str = kind_or_artifacts, _src: str = plugin_name,
                         _dist: str = dist, _ver: str = version, _hook: str = hookname) -> None:
                problem = _registration_problem(obj, _kind, _src, _hook)
                if problem is not None:
                    if isolate(_src, problem):
                        return
                    raise PluginError(problem)
                if _kind == "artifact":
                    old = reg.artifact_types.get(obj.type_name)
                    if old is not None and old is not obj:
                        clash = (f"plugin {_src!r} registered artifact type {obj.type_name!r}, which "
                                 f"{old.__module__}.{old.__qualname__} already is; rename its type_name")
                        if isolate(_src, clash):
                            return
                        raise PluginError(clash)
                    reg.artifact_types[obj.type_name] = obj
                    return
                existing = reg.components[_kind].get(obj.name)
                if existing is not None and existing.cls is not obj:
                    msg = (f"duplicate {_kind} component name {obj.name!r}: registered by "
                           f"{existing.source} ({existing.cls.__module__}.{existing.cls.__qualname__}"
                           f"{ours(existing.source)}) and by {_src} ({obj.__module__}.{obj.__qualname__}{ours(_src)})")
                    loser = _src if _src in third_party else existing.source
                    if loser in third_party and not strict:
                        msg += f"; the one from {loser!r} is left out (rename it)"
                        isolate(loser, msg)
                        if loser == existing.source:  # a built-in after a third party: the built-in wins
                            reg.components[_kind][obj.name] = Entry(obj, _src, _dist, _ver)
                        return
                    raise PluginError(msg)
                reg.components[_kind][obj.name] = Entry(obj, _src, _dist, _ver)

            try:
                impl.function(register)
            except PluginError:
                raise
            except Exception as exc:
                msg = f"plugin {plugin_name!r} failed in {hookname}: {type(exc).__name__}: {exc}"
                if plugin_name.startswith("hemaflow.plugins") or strict:
                    raise PluginError(msg) from exc
                if plugin_name in third_party:
                    _report_broken(reg.broken, plugin_name, f"{dist} {version}", msg, exc)
                else:
                    reg.broken.append(BrokenPlugin(plugin_name, f"{dist} {version}", msg))
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
