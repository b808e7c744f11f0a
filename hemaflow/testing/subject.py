"""What the conformance checks run: a :class:`Subject` (a component class with the parameters and
inputs to run it with) and its :class:`Run` results, shared by the checks of one subject.

A run happens the way the runner does it (the same seeding, the same handling of what ``run``
returns) on the tiny inputs of :mod:`hemaflow.testing.fixtures`.
"""

from __future__ import annotations

import atexit
import copy
import random
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jsonschema

from hemaflow.core.artifacts import Artifact, TableArtifact
from hemaflow.core.component import Component, RunContext
from hemaflow.core.errors import HemaflowError
from hemaflow.testing.fixtures import Fixtures


class ConformanceError(AssertionError):
    """A component breaks hemaflow's component contract; the message says what to fix."""


ConformanceError.__module__ = "hemaflow.testing"  # its public home (tracebacks and doctests say so)


class NotRun(Exception):
    """The kit does not run this component here (it needs data or files); the reason is the message."""


def fail(subject: "Subject | type", message: str) -> None:
    cls = subject.cls if isinstance(subject, Subject) else subject
    raise ConformanceError(f"{cls.__module__}.{cls.__qualname__} ({cls.kind or '?'} {cls.name or '?'!r}): {message}")


_ROOT: Path | None = None


def _root() -> Path:
    global _ROOT
    if _ROOT is None:
        _ROOT = Path(tempfile.mkdtemp(prefix="hemaflow-conformance-"))
        atexit.register(shutil.rmtree, _ROOT, True)
    return _ROOT


_REGISTRY_TYPES: dict[str, type[Artifact]] | None = None


def registered_artifact_types() -> dict[str, type[Artifact]]:
    """Artifact types of hemaflow and of every installed plugin (entry points), once per process."""
    global _REGISTRY_TYPES
    if _REGISTRY_TYPES is None:
        from hemaflow.core.plugins import PluginWarning, build_registry, make_plugin_manager

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginWarning)  # a broken plugin is not this component's problem
            _REGISTRY_TYPES = dict(build_registry(make_plugin_manager()).artifact_types)
    return _REGISTRY_TYPES


@dataclass
class Run:
    """One run of a component: its inputs, what ``run`` returned (checked into a dict) and where."""

    variant: str
    inputs: dict[str, Artifact]
    outputs: dict[str, Artifact] | None
    workdir: Path
    refused: HemaflowError | None = None


@dataclass
class Subject:
    """A component class and how to run it: ``params`` (overrides of the schema defaults, or a
    callable ``root -> dict``), ``inputs`` (name -> Artifact, ``callable(fixtures) -> Artifact`` or
    None to leave an optional input out) and extra ``artifact_types``."""

    cls: type[Component]
    params: dict[str, Any] | Callable[[Path], dict[str, Any]] | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    artifact_types: tuple[type[Artifact], ...] = ()
    skip_run: str | None = None
    _runs: dict[tuple[str, int], Run] = field(default_factory=dict, repr=False)
    _fixtures: dict[str, Fixtures] = field(default_factory=dict, repr=False)
    _params: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def root(self) -> Path:
        path = _root() / f"{self.cls.__module__}.{self.cls.__qualname__}-{id(self):x}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def types(self) -> dict[str, type[Artifact]]:
        types = dict(registered_artifact_types())
        hook = getattr(sys.modules.get(self.cls.__module__), "register_artifact_types", None)
        if callable(hook):  # the plugin's own types, registered beside the component
            try:
                hook(register=lambda t: types.setdefault(t.type_name, t))
            except Exception as exc:
                fail(self, f"its module's register_artifact_types hook raised {type(exc).__name__}: {exc}")
        for t in self.artifact_types:
            types[t.type_name] = t
        return types

    def resolved_params(self) -> dict[str, Any]:
        """The schema defaults with this subject's overrides, validated like a recipe's ``with:``."""
        if self._params is None:
            from hemaflow.core.schema import fill_defaults

            over = self.params(self.root / "params") if callable(self.params) else dict(self.params or {})
            params = fill_defaults(self.cls.schema, copy.deepcopy(over))
            try:
                jsonschema.Draft202012Validator(self.cls.schema).validate(params)
            except jsonschema.ValidationError as exc:
                where = "/".join(map(str, exc.absolute_path)) or "(top level)"
                fail(self, f"its parameters (schema defaults + {over!r}) do not validate against its schema at "
                           f"{where}: {exc.message}; fix the schema's defaults or pass valid params=")
            self._params = params
        return copy.deepcopy(self._params)

    def fixtures(self, variant: str = "default") -> Fixtures:
        if variant not in self._fixtures:
            self._fixtures[variant] = Fixtures(self.root / f"fixtures-{variant}", variant=variant)
        return self._fixtures[variant]

    def build_inputs(self, variant: str = "default") -> dict[str, Artifact]:
        fx, types, out = self.fixtures(variant), self.types(), {}
        for name, tname in self.cls.inputs.items():
            optional, tname = tname.endswith("?"), tname.rstrip("?")
            if name in self.inputs:
                given = self.inputs[name]
                if given is None:
                    continue
                out[name] = given(fx) if callable(given) and not isinstance(given, Artifact) else given
                continue
            value = fx.for_type(tname)
            if value is None and tname in types and hasattr(types[tname], "conformance_example"):
                value = types[tname].conformance_example(fx)  # a plugin's own type may ship one
            if value is not None:
                out[name] = value
            elif not optional:
                fail(self, f"input {name!r} ({tname}) has no built-in fixture; pass "
                           f"inputs={{{name!r}: lambda fixtures: <a saved {tname}>}} to check_component, or give "
                           f"{tname} a classmethod conformance_example(fixtures) returning one")
        return out

    def run(self, variant: str = "default", repeat: int = 0) -> Run:
        """Run the component once on ``variant`` fixtures (memoized)."""
        if self.skip_run:
            raise NotRun(self.skip_run)
        key = (variant, repeat)
        if key not in self._runs:
            self._runs[key] = self._run(variant, repeat)
        return self._runs[key]

    def _run(self, variant: str, repeat: int) -> Run:
        inputs = self.build_inputs(variant)
        workdir = self.root / f"run-{variant}-{repeat}"
        if workdir.exists():
            shutil.rmtree(workdir)
        ctx = RunContext(step_id="conformance", workdir=workdir, seed=0)
        comp = self.cls(**self.resolved_params())
        random.seed(ctx.torch_seed("python"))  # as the runner seeds every step
        torch = sys.modules.get("torch")
        threads = None
        if torch is not None:
            torch.manual_seed(ctx.torch_seed("torch"))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # tiny inputs: one thread is fastest and deterministic
        try:
            returned = comp.run(ctx, **inputs)
        except HemaflowError as exc:
            if variant != "default":
                return Run(variant, inputs, None, workdir, refused=exc)
            fail(self, f"run() on the kit's tiny inputs ({_describe(inputs)}) raised {type(exc).__name__}: {exc}; "
                       f"it must run on small valid inputs")
        except KeyError as exc:
            props = (self.cls.schema.get("properties") or {})
            key = exc.args[0] if exc.args else None
            if key in props and "default" not in props[key]:
                fail(self, f"property {key!r} has no default and is not required, and run() reads it (KeyError "
                           f"{key!r} when a recipe leaves it out); add \"default\": ... to it or list it in \"required\"")
            fail(self, f"run() on the {variant!r} inputs ({_describe(inputs)}) crashed with KeyError: {exc}")
        except Exception as exc:
            what = "the kit's tiny inputs" if variant == "default" else f"the {variant!r} edge case"
            fix = ("handle it, or raise hemaflow.core.errors.DataError with a message naming the problem"
                   if variant != "default" else "fix the component so it runs on small valid inputs")
            if "is missing columns" in str(exc):
                fix = "keep the id columns of the input rows (image_id, patient_id, label, ...) in the output table"
            fail(self, f"run() on {what} ({_describe(inputs)}) crashed with {type(exc).__name__}: {exc}; {fix}")
        finally:
            if threads is not None:
                torch.set_num_threads(threads)
        return Run(variant, inputs, self._check_returned(returned, workdir, inputs), workdir)

    def _check_returned(self, returned: Any, workdir: Path, inputs: dict[str, Artifact]) -> dict[str, Artifact]:
        declared = self.cls.outputs
        if isinstance(returned, Artifact) and len(declared) == 1:
            returned = {next(iter(declared)): returned}
        if not isinstance(returned, dict):
            example = ", ".join(f"{k!r}: <{t}>" for k, t in declared.items())
            fail(self, f"run() returned {type(returned).__name__}; it must return a dict of its declared "
                       f"outputs, {{{example}}}")
        missing = [k for k in declared if k not in returned]
        if missing:
            fail(self, f"run() did not return declared output(s) {missing}; it returned {sorted(returned)}")
        extra = [k for k in returned if k not in declared]
        if extra:
            fail(self, f"run() returned undeclared output(s) {extra}; declare them in outputs")
        types = self.types()
        for name, art in returned.items():
            want = types.get(declared[name])
            if not isinstance(art, Artifact):
                fail(self, f"output {name!r} is a {type(art).__name__}, not an Artifact; return a saved "
                           f"{declared[name]}")
            if want is not None and not isinstance(art, want):
                fail(self, f"output {name!r} is a {type(art).__name__}; it is declared {declared[name]}: return a "
                           f"{want.__module__}.{want.__qualname__} (e.g. build it with {want.__qualname__}(ctx.out_dir("
                           f"{name!r}), table, meta).save())")
            if isinstance(art, TableArtifact):
                missing = [c for c in art.required_columns if c not in art.table.columns]
                if missing:
                    fail(self, f"output {name!r} ({type(art).__name__}) lacks column(s) {missing}; keep the id "
                               f"columns of the input rows (e.g. table['patient_id'] = input.table['patient_id'])")
            try:
                if not (art.path / "meta.json").exists():
                    art.save()  # as the runner does for an unsaved output
            except Exception as exc:
                fail(self, f"output {name!r} ({declared[name]}) could not be saved: {type(exc).__name__}: {exc}")
            passed_through = any(art.path.resolve() == i.path.resolve() for i in inputs.values())
            if not passed_through and not art.path.resolve().is_relative_to(workdir.resolve()):
                fail(self, f"output {name!r} is written to {art.path}, outside the step's work directory; write "
                           f"it below ctx.out_dir({name!r}) (the cache keeps only the work directory)")
        return returned


def _describe(inputs: dict[str, Artifact]) -> str:
    return ", ".join(f"{k}={v.summary()}" for k, v in inputs.items()) or "no inputs"
