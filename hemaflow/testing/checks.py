"""The conformance checks: each takes a :class:`Subject` (a component class with the parameters
and inputs to run it with) and raises :class:`ConformanceError` saying what to fix.

Static checks read the class; run checks run the component on the tiny inputs of
:mod:`hemaflow.testing.fixtures` the way the runner does (same seeding, same output handling) and
inspect what comes back. Runs are shared between checks of one subject (and kept for the process).
"""

from __future__ import annotations

import atexit
import copy
import inspect
import json
import math
import random
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jsonschema
import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Artifact, Metrics, Model, Predictions, TableArtifact
from hemaflow.core.component import KINDS, Component, RunContext
from hemaflow.core.errors import HemaflowError
from hemaflow.testing.fixtures import Fixtures

NO_RUN_KINDS = ("reporter", "executor", "tracker")

# edge-case fixture variants per kind, run where the component reads an input the variant changes
EDGE_CASES = {
    "normalizer": ("grey_image",),
    "segmenter": ("grey_image",),
    "postprocessor": ("empty_mask",),
    "cells": ("grey_image", "empty_mask"),
    "features": ("bag_of_one",),
    "classifier": ("one_class_fold",),
    "mil": ("empty_bag", "bag_of_one", "one_class_fold"),
    "evaluator": ("one_class_fold", "empty_mask"),
}
VARIANT_TYPES = {  # which input artifact types a variant changes
    "grey_image": {"ImageSet", "MaskSet", "CellSet", "FeatureTable"},
    "empty_mask": {"MaskSet", "CellSet", "FeatureTable"},
    "bag_of_one": {"CellSet", "FeatureTable"},
    "empty_bag": {"CellSet", "FeatureTable"},
    "one_class_fold": {"Split", "Predictions"},
}


class ConformanceError(AssertionError):
    """A component breaks hemaflow's component contract; the message says what to fix."""


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
        return Run(variant, inputs, self._check_returned(returned, workdir), workdir)

    def _check_returned(self, returned: Any, workdir: Path) -> dict[str, Artifact]:
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
        return returned


def _describe(inputs: dict[str, Artifact]) -> str:
    return ", ".join(f"{k}={v.summary()}" for k, v in inputs.items()) or "no inputs"


# -- static checks ----------------------------------------------------------------------------
def check_class_attributes(s: Subject) -> None:
    """kind, name and version are set and of the right type."""
    cls = s.cls
    if not (isinstance(cls, type) and issubclass(cls, Component)):
        raise ConformanceError(f"{cls!r} is not a subclass of hemaflow.core.component.Component")
    if cls.kind not in KINDS:
        fail(s, f"kind {cls.kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(cls.name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", cls.name):
        fail(s, f"name {cls.name!r} must be a lower-case identifier (letters, digits, _), e.g. name = 'my_{cls.kind}'")
    if not isinstance(cls.version, str) or not cls.version:
        fail(s, f"version is {cls.version!r} ({type(cls.version).__name__}); it must be a non-empty string, e.g. "
                f"version = \"{cls.version if cls.version not in (None, '') else 1}\" (it enters the cache key: bump it "
                f"when results change)")
    if not (cls.__doc__ or "").strip():
        fail(s, "has no docstring; its first line is the description `hemaflow plugins` shows")


def check_schema(s: Subject) -> None:
    """The schema is a valid JSON Schema of an object that rejects unknown keys."""
    schema = s.cls.schema
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        fail(s, f"schema is not a valid JSON Schema (2020-12): {exc.message}")
    if schema.get("type") != "object":
        fail(s, "schema must describe an object: set \"type\": \"object\"")
    if schema.get("additionalProperties") is not False:
        fail(s, "schema must set \"additionalProperties\": False so that a typo in a recipe's with: is an error")


def check_schema_defaults(s: Subject) -> None:
    """Every property has a default or is required; the defaults validate; the code reads only
    declared properties."""
    schema = s.cls.schema
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    try:
        source = inspect.getsource(s.cls)
    except (OSError, TypeError):
        source = ""
    read = set(re.findall(r"params\[\s*[\"'](\w+)[\"']\s*\]", source))
    for name in sorted(read):
        if name not in props:
            fail(s, f"run code reads params[{name!r}], which its schema does not declare; add {name!r} to "
                    f"schema[\"properties\"] with a default")
        if "default" not in props[name] and name not in required:
            fail(s, f"property {name!r} has no default and is not required, but the code reads params[{name!r}] "
                    f"(a KeyError when a recipe leaves it out); add \"default\": ... to it or list it in \"required\"")
    for name in sorted(required - set(props)):
        fail(s, f"schema requires {name!r} but does not declare it in properties")
    if not required:
        s.resolved_params()  # the defaults alone must validate


def check_init_stores_params(s: Subject) -> None:
    """``__init__`` only stores the parameters and ``get_params`` returns them (scikit-learn's rule)."""
    params = s.resolved_params()
    try:
        comp = s.cls(**copy.deepcopy(params))
    except Exception as exc:
        fail(s, f"__init__(**params) raised {type(exc).__name__}: {exc}; __init__ must only store the parameters "
                f"(do the work in run)")
    got = comp.get_params()
    if got != params:
        fail(s, f"get_params() returned {got!r}, not the constructor parameters {params!r}; don't change "
                f"self.params in __init__ (derive values in run)")
    try:
        json.dumps(comp.cache_params(), sort_keys=True)
    except TypeError as exc:
        fail(s, f"cache_params() is not JSON-serializable ({exc}); it enters the cache key")
    problems = comp.check_params()
    if not isinstance(problems, list):
        fail(s, f"check_params() returned {type(problems).__name__}; return a list of (pointer, message) pairs")
    if problems and not s.skip_run:  # a component the kit does not run may lack its files here
        fail(s, f"check_params() finds problems with the parameters it is checked with: {problems}; pass params= "
                f"that are valid on this machine")
    fp = comp.fingerprint()
    if fp is not None and not isinstance(fp, str):
        fail(s, f"fingerprint() returned {type(fp).__name__}; return a str hash or None")
    if not s.skip_run and s.cls(**copy.deepcopy(params)).fingerprint() != fp:
        fail(s, "fingerprint() differs between two instances with the same parameters; hash the files read "
                "(content or size and mtime), not the time or the object")


def check_artifact_types(s: Subject) -> None:
    """Inputs and outputs name registered artifact types; stages that produce something declare it."""
    types = s.types()
    for what, decl in (("inputs", s.cls.inputs), ("outputs", s.cls.outputs)):
        if not isinstance(decl, dict):
            fail(s, f"{what} must be a dict name -> artifact type name; got {type(decl).__name__}")
        for name, tname in decl.items():
            base = str(tname).rstrip("?")
            if what == "outputs" and str(tname).endswith("?"):
                fail(s, f"output {name!r} is marked optional ({tname!r}); outputs are always produced")
            if base not in types:
                import difflib

                close = difflib.get_close_matches(base, list(types), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else (
                    "; register your own type with a register_artifact_types hook in the component's module or "
                    "plugin, or pass artifact_types=[...] to check_component")
                fail(s, f"{what[:-1]} {name!r} has unknown artifact type {tname!r}{hint}")
    if s.cls.kind not in NO_RUN_KINDS and not s.cls.outputs:
        fail(s, "declares no outputs; set outputs = {name: artifact type}")


def check_run_signature(s: Subject) -> None:
    """``run`` (or ``map``/``write``/``track``) accepts what the runner passes."""
    method = {"executor": "map", "reporter": "write", "tracker": "track"}.get(s.cls.kind, "run")
    fn = getattr(s.cls, method, None)
    if fn is None or (method == "run" and fn is Component.run):
        fail(s, f"does not implement {method}()")
    if method != "run":
        return
    sig = inspect.signature(fn)
    kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    for name in s.cls.inputs:
        if name not in sig.parameters and not kw:
            fail(s, f"run() does not accept its declared input {name!r}; add a parameter `{name}`")
    for name, p in sig.parameters.items():
        if name in ("self", "ctx") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if name not in s.cls.inputs:
            fail(s, f"run() takes {name!r}, which is not a declared input; declare it in inputs or drop it")
        if s.cls.inputs[name].endswith("?") and p.default is inspect.Parameter.empty:
            fail(s, f"input {name!r} is optional ({s.cls.inputs[name]!r}) but run() has no default for it; "
                    f"write `{name}=None`")


# -- run checks -------------------------------------------------------------------------------
def check_run_outputs(s: Subject) -> None:
    """It runs on the kit's inputs and returns every declared output with its declared type."""
    s.run()


def check_output_content(s: Subject) -> None:
    """Outputs hold what their type promises: columns, dtypes, value ranges, ids of the inputs."""
    run = s.run()
    for name, art in run.outputs.items():
        check_artifact_content(s, name, art, run)


def check_deterministic(s: Subject) -> None:
    """Two runs with the same seed give equal outputs."""
    a, b = s.run(), s.run(repeat=1)
    for name in a.outputs:
        diff = compare_content(a.outputs[name], b.outputs[name], a.workdir, b.workdir)
        if diff:
            fail(s, f"two runs with the same seed differ in output {name!r}: {diff}; draw randomness from "
                    f"ctx.rng(...) / ctx.torch_seed(...) (never from unseeded numpy/torch/random state) and don't "
                    f"depend on time or set order")


def check_cache_round_trip(s: Subject) -> None:
    """Each output, loaded back from its folder the way the cache does, equals what run returned."""
    run, types = s.run(), s.types()
    for name, art in run.outputs.items():
        meta_path = art.path / "meta.json"
        tname = json.loads(meta_path.read_text()).get("type")
        cls = types.get(tname)
        if cls is None:
            fail(s, f"output {name!r} is saved as type {tname!r}, which is not a registered artifact type; register "
                    f"it with a register_artifact_types hook")
        try:
            loaded = cls.load(art.path)
        except Exception as exc:
            fail(s, f"output {name!r} ({tname}) cannot be loaded back from {art.path}: {type(exc).__name__}: {exc}; "
                    f"save() must write everything load() reads")
        diff = compare_content(art, loaded, art.path, art.path, round_trip=True)
        if diff:
            fail(s, f"output {name!r} ({tname}) changes when saved and loaded back: {diff}; keep the table and meta "
                    f"in plain types (str, int, float, lists) and save() after the last change")
        if type(loaded) is not type(art) and not isinstance(loaded, type(art)):
            fail(s, f"output {name!r} loads back as {type(loaded).__name__}, not {type(art).__name__}")


def make_edge_check(variant: str) -> Callable[[Subject], None]:
    def check(s: Subject) -> None:
        run = s.run(variant)
        if run.refused is not None:
            msg = str(run.refused)
            if not msg.strip():
                fail(s, f"refused the {variant!r} edge case with an empty {type(run.refused).__name__}; say why")
            return  # a clear refusal is fine
        for name, art in run.outputs.items():
            check_artifact_content(s, name, art, run)

    check.__name__ = f"check_edge_{variant}"
    check.__doc__ = f"On the {variant!r} fixtures it either works (outputs valid) or refuses with a HemaflowError."
    return check


def check_executor_map(s: Subject) -> None:
    """``map(fn, items)`` returns ``fn(item)`` in item order, also for no items and one item."""
    ex = s.cls(**s.resolved_params())
    for items in ([], [3], list(range(7))):
        try:
            got = ex.map(square, items)
        except Exception as exc:
            fail(s, f"map(square, {items}) raised {type(exc).__name__}: {exc}")
        if list(got) != [i * i for i in items]:
            fail(s, f"map(square, {items}) returned {got!r}; it must return the results in item order")


def check_reporter_writes(s: Subject) -> None:
    """``write(run_dir, run)`` writes a self-contained ``report.html``, also for a run without metrics."""
    fx = s.fixtures()
    for case, run in (("default", fx.run_dict(s.root / "report-run")),
                      ("empty", dict(fx.run_dict(s.root / "report-empty"), metrics={}, predictions=None, steps=[]))):
        run_dir = Path(run["run_dir"])
        try:
            s.cls(**s.resolved_params()).write(run_dir, run)
        except Exception as exc:
            fail(s, f"write(run_dir, run) for a {case} run raised {type(exc).__name__}: {exc}")
        page = run_dir / "report.html"
        if not page.is_file() or "<html" not in page.read_text(errors="replace").lower():
            fail(s, f"write(run_dir, run) for a {case} run did not write an HTML page at {page}")
        if re.search(r"<(script|link|img)[^>]+(src|href)=[\"']https?://", page.read_text(errors="replace")):
            fail(s, "report.html loads resources from the network; inline them (the report must open offline)")


def check_tracker_track(s: Subject) -> None:
    """``track(run_dir, run)`` logs a finished run without raising."""
    fx = s.fixtures()
    run = fx.run_dict(s.root / "tracked-run")
    try:
        s.cls(**s.resolved_params()).track(run["run_dir"], run)
    except HemaflowError as exc:
        fail(s, f"track(run_dir, run) refused a finished run: {exc}")
    except Exception as exc:
        fail(s, f"track(run_dir, run) raised {type(exc).__name__}: {exc}")


def square(x: int) -> int:
    """A top-level (picklable) function for executor checks."""
    return x * x


# -- content of artifacts ---------------------------------------------------------------------
def _input_patients(run: Run) -> set[str] | None:
    ids = set()
    for art in run.inputs.values():
        if isinstance(art, TableArtifact) and "patient_id" in art.table.columns:
            ids |= set(art.table["patient_id"].astype(str))
    return ids or None


def _input_images(run: Run):
    from hemaflow.plugins.artifacts import ImageSet

    return next((a for a in run.inputs.values() if isinstance(a, ImageSet)), None)


def check_artifact_content(s: Subject, name: str, art: Artifact, run: Run) -> None:
    """Type-specific checks of one output artifact (the promises of each built-in type)."""
    from hemaflow.plugins import artifacts as A

    label = f"output {name!r} ({type(art).__name__})"
    if isinstance(art, TableArtifact):
        missing = [c for c in art.required_columns if c not in art.table.columns]
        if missing:
            fail(s, f"{label} lacks column(s) {missing}; keep the id columns of the input rows "
                    f"(e.g. table['patient_id'] = input.table['patient_id'])")
        if "patient_id" in art.required_columns:
            if art.table["patient_id"].isna().any():
                fail(s, f"{label} has empty patient_id values; every row needs its patient")
            known = _input_patients(run)
            if known is not None and not set(art.table["patient_id"].astype(str)) <= known:
                extra = sorted(set(art.table["patient_id"].astype(str)) - known)[:3]
                fail(s, f"{label} has patient ids {extra} that are in none of its inputs; keep patient_id as given")
    images = _input_images(run)
    if isinstance(art, A.ImageSet):
        _check_images(s, label, art, images if s.cls.kind == "normalizer" else None)
    elif isinstance(art, A.MaskSet):
        _check_masks(s, label, art, images)
    elif isinstance(art, A.CellSet):
        _check_cells(s, label, art)
    elif isinstance(art, A.FeatureTable):
        _check_features(s, label, art)
    elif isinstance(art, A.Split):
        _check_split(s, label, art, run)
    elif isinstance(art, Predictions):
        _check_predictions(s, label, art)
    elif isinstance(art, Metrics):
        _check_metrics(s, label, art.values)
    elif isinstance(art, Model) and not art.path.is_dir():
        fail(s, f"{label} has no folder at {art.path}; write the model files below ctx.out_dir({name!r})")


def _check_images(s: Subject, label: str, art: Any, source: Any) -> None:
    from hemaflow.plugins import io

    fix = ("write RGB uint8 HxWx3 image files with hemaflow.plugins.io.write_png(path, "
           "np.clip(img, 0, 255).astype(np.uint8))")
    for _, row in art.table.iterrows():
        path = art.resolve(row["path"])
        if not path.is_file():
            fail(s, f"{label}: image {row['image_id']!r} points at {path}, which does not exist; store paths relative "
                    f"to the artifact folder or absolute")
        if path.suffix.lower() == ".npy":
            arr = np.load(path)
            fail(s, f"{label}: image {row['image_id']!r} is stored as {path.name} ({arr.dtype} {arr.shape}), which no "
                    f"image reader opens; {fix}")
        try:
            raw = io.read_array(path)
        except HemaflowError as exc:
            fail(s, f"{label}: image {row['image_id']!r} cannot be read: {exc}; {fix}")
        if raw.dtype != np.uint8:
            fail(s, f"{label}: image {row['image_id']!r} is stored as {raw.dtype}; {fix}")
        img = art.read_image(row)
        if img.ndim != 3 or img.shape[2] != 3:
            fail(s, f"{label}: image {row['image_id']!r} reads as shape {img.shape}; {fix}")
    if source is not None:
        want, got = list(source.table["image_id"]), list(art.table["image_id"])
        if sorted(map(str, want)) != sorted(map(str, got)):
            fail(s, f"{label} has images {got[:4]}... but its input has {want[:4]}...; a normalizer keeps every "
                    f"row (same image_id, patient_id, label)")
        for _, row in source.table.iterrows():
            a, b = source.read_image(row), art.read_image(str(row["image_id"]))
            if a.shape != b.shape:
                fail(s, f"{label}: image {row['image_id']!r} is {b.shape[:2]}, its input {a.shape[:2]}; keep the size")


def _check_masks(s: Subject, label: str, art: Any, images: Any) -> None:
    from hemaflow.plugins import io

    if images is not None:
        want, got = set(images.table["image_id"].astype(str)), set(art.table["image_id"].astype(str))
        if want != got:
            fail(s, f"{label} covers images {sorted(got)[:4]} but its input has {sorted(want)[:4]}; one mask per "
                    f"image (an image without cells gets an all-zero mask)")
    for _, row in art.table.iterrows():
        path = art.resolve(row["path"])
        raw = np.load(path) if path.suffix == ".npy" else io.read_array(path)
        if not np.issubdtype(raw.dtype, np.integer) or raw.ndim != 2:
            fail(s, f"{label}: mask {row['image_id']!r} is stored as {raw.dtype} {raw.shape}; masks are integer HxW "
                    f"(uint8 0 background, 1 cytoplasm, 2 nucleus): write them with write_png(path, mask.astype(np.uint8))")
        bad = sorted(set(np.unique(raw).tolist()) - {0, 1, 2})
        if bad:
            fail(s, f"{label}: mask {row['image_id']!r} holds values {bad[:5]}; only 0 (background), 1 (cytoplasm) and "
                    f"2 (nucleus) are allowed (instance labels go to instances_path as int32 .npy)")
        if images is not None and str(row["image_id"]) in set(images.table["image_id"].astype(str)):
            shape = images.read_image(str(row["image_id"])).shape[:2]
            if raw.shape != shape:
                fail(s, f"{label}: mask {row['image_id']!r} is {raw.shape}, its image {shape}; masks match their image")
        inst = art.read_instances(str(row["image_id"]))
        if inst is not None and (not np.issubdtype(inst.dtype, np.integer) or inst.shape != raw.shape):
            fail(s, f"{label}: instances of {row['image_id']!r} are {inst.dtype} {inst.shape}; store int32 labels "
                    f"of the mask's shape")


def _check_cells(s: Subject, label: str, art: Any) -> None:
    try:
        crops, masks = art.crops, art.crop_masks
    except (OSError, ValueError) as exc:
        fail(s, f"{label}: crops.npy / crop_masks.npy missing or unreadable ({exc}); save them in the artifact folder")
    if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
        fail(s, f"{label}: crops.npy is {crops.dtype} {crops.shape}; it must be uint8 (N, S, S, 3)")
    if masks.dtype != np.uint8 or masks.shape != crops.shape[:3]:
        fail(s, f"{label}: crop_masks.npy is {masks.dtype} {masks.shape}; it must be uint8 {crops.shape[:3]}")
    if len(masks) and not set(np.unique(masks).tolist()) <= {0, 1, 2}:
        fail(s, f"{label}: crop_masks.npy holds values other than 0, 1, 2")
    idx = art.table["crop_index"]
    if len(idx) and (idx.min() < 0 or idx.max() >= len(crops)):
        fail(s, f"{label}: crop_index runs {idx.min()}..{idx.max()} but there are {len(crops)} crops")
    if art.table["cell_id"].duplicated().any():
        fail(s, f"{label}: cell_id values repeat; each cell needs its own id (e.g. '<image_id>:<k>')")


def _check_features(s: Subject, label: str, art: Any) -> None:
    cols = art.feature_columns
    if not cols:
        fail(s, f"{label} has no meta['feature_columns']; list the feature columns in order")
    missing = [c for c in cols if c not in art.table.columns]
    if missing:
        fail(s, f"{label}: feature columns {missing[:5]} are listed in meta but not in the table")
    for c in cols:
        if not pd.api.types.is_numeric_dtype(art.table[c]):
            fail(s, f"{label}: feature column {c!r} is {art.table[c].dtype}; features are numbers")
    if len(cols) and np.isinf(art.table[cols].to_numpy(dtype=float)).any():
        fail(s, f"{label} holds infinite feature values; guard divisions (e.g. np.divide(..., where=den > 0))")


def _check_split(s: Subject, label: str, art: Any, run: Run) -> None:
    known = _input_patients(run) or set()
    for fold, g in art.table.groupby("fold"):
        if g["patient_id"].duplicated().any():
            fail(s, f"{label}: a patient appears twice in fold {fold}")
        if known and set(g["patient_id"].astype(str)) != known:
            fail(s, f"{label}: fold {fold} leaves out patients {sorted(known - set(g['patient_id'].astype(str)))[:3]}; "
                    f"every patient gets a partition in every fold")


def _check_predictions(s: Subject, label: str, art: Predictions) -> None:
    t, classes = art.table, art.classes
    if not classes:
        fail(s, f"{label} has no meta['classes']; list the classes in probability-column order")
    bad = sorted(set(t["level"].astype(str)) - {"patient", "image", "cell"})
    if bad:
        fail(s, f"{label}: level {bad} is not one of patient, image, cell")
    probs = [f"prob_{c}" for c in classes]
    missing = [p for p in probs if p not in t.columns]
    if missing:
        fail(s, f"{label} lacks probability columns {missing}")
    if len(t):
        p = t[probs].to_numpy(dtype=float)
        if not np.isfinite(p).all() or (p < -1e-6).any() or (p > 1 + 1e-6).any():
            fail(s, f"{label}: probabilities must be finite numbers in [0, 1]; found {p[~np.isfinite(p)][:3]} "
                    f"or values outside")
        if not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
            fail(s, f"{label}: probabilities of a row must sum to 1 (softmax them); first sums "
                    f"{np.round(p.sum(axis=1)[:3], 3).tolist()}")
        unknown = sorted(set(t["y_pred"].astype(str)) - set(map(str, classes)))
        if unknown:
            fail(s, f"{label}: y_pred holds {unknown}, which are not in meta['classes'] {classes}")


def _check_metrics(s: Subject, label: str, values: Any, path: str = "") -> None:
    if path == "" and not isinstance(values, dict):
        fail(s, f"{label}: values must be a dict of sections (patient, image, cell, segmentation, folds)")
    if isinstance(values, dict):
        for k, v in values.items():
            _check_metrics(s, label, v, f"{path}/{k}")
    elif isinstance(values, (list, tuple)):
        for i, v in enumerate(values):
            _check_metrics(s, label, v, f"{path}/{i}")
    elif isinstance(values, float) and math.isinf(values):
        fail(s, f"{label}: {path} is infinite")
    elif not isinstance(values, (str, int, float, bool, type(None), np.integer, np.floating)):
        fail(s, f"{label}: {path} is a {type(values).__name__}; metrics hold numbers, strings, lists and dicts")


# -- comparing artifacts ----------------------------------------------------------------------
def _digest(arr: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(np.ascontiguousarray(arr).tobytes() + str(arr.shape).encode()).hexdigest()[:12]


def _normal_table(art: Artifact, workdir: Path) -> pd.DataFrame:
    from hemaflow.plugins import artifacts as A
    from hemaflow.plugins import io

    t = art.table.reset_index(drop=True).copy()
    for col in t.columns:
        if not (col == "path" or col.endswith("_path")):
            continue
        vals = []
        for v in t[col]:
            if not isinstance(v, str) or not v:
                vals.append(v)
                continue
            p = art.resolve(v)
            if not p.is_file():
                vals.append(v.replace(str(workdir), "<workdir>"))
                continue
            try:  # compare pixels, not encodings (a PNG's bytes may carry a timestamp)
                if p.suffix == ".npy":
                    arr = np.load(p)
                elif isinstance(art, (A.ImageSet, A.MaskSet)):
                    arr = io.read_array(p)
                else:
                    arr = np.frombuffer(p.read_bytes(), np.uint8)
            except Exception:
                arr = np.frombuffer(p.read_bytes(), np.uint8)
            vals.append(_digest(arr))
        t[col] = vals
    return t


def _json_default(obj: Any) -> Any:
    """How meta.json stores a value, except that anything it would store as its repr stays marked."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return f"<unsaveable {type(obj).__name__}>"


def _normal_meta(meta: dict[str, Any], workdir: Path) -> Any:
    text = json.dumps(meta, sort_keys=True, default=_json_default).replace(str(Path(workdir).resolve()), "<workdir>")
    return json.loads(text.replace(str(workdir), "<workdir>"))


def _frames_differ(a: pd.DataFrame, b: pd.DataFrame) -> str | None:
    if list(a.columns) != list(b.columns):
        return f"columns {list(a.columns)} vs {list(b.columns)}"
    if len(a) != len(b):
        return f"{len(a)} vs {len(b)} rows"
    for col in a.columns:
        x, y = a[col], b[col]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            if not np.allclose(x.to_numpy(float), y.to_numpy(float), rtol=1e-5, atol=1e-7, equal_nan=True):
                i = int(np.argmax(~np.isclose(x.to_numpy(float), y.to_numpy(float), rtol=1e-5, atol=1e-7,
                                              equal_nan=True)))
                return f"column {col!r} row {i}: {x.iloc[i]!r} vs {y.iloc[i]!r}"
        else:
            xs, ys = x.astype(str).tolist(), y.astype(str).tolist()
            if xs != ys:
                i = next(k for k in range(len(xs)) if xs[k] != ys[k])
                return f"column {col!r} row {i}: {xs[i]!r} vs {ys[i]!r}"
    return None


def compare_content(a: Artifact, b: Artifact, wa: Path, wb: Path, *, round_trip: bool = False) -> str | None:
    """A short description of how the content of ``a`` and ``b`` differs, or None when equal."""
    from hemaflow.plugins import artifacts as A

    if type(a) is not type(b) and not round_trip:
        return f"{type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, TableArtifact):
        d = _frames_differ(_normal_table(a, wa), _normal_table(b, wb))
        if d:
            return d
    if isinstance(a, Metrics):
        d = _values_differ(a.values, b.values)
        if d:
            return d
    if isinstance(a, A.CellSet):
        for attr in ("crops", "crop_masks"):
            if not np.array_equal(getattr(a, attr), getattr(b, attr)):
                return f"{attr}.npy differs"
    ma, mb = _normal_meta(a.meta, wa), _normal_meta(b.meta, wb)
    if not isinstance(a, Model) and _values_differ(ma, mb):
        return f"meta {_values_differ(ma, mb)}"
    if isinstance(a, Model):
        fa = sorted(p.relative_to(a.path).as_posix() for p in a.path.rglob("*") if p.is_file())
        fb = sorted(p.relative_to(b.path).as_posix() for p in b.path.rglob("*") if p.is_file())
        if fa != fb:
            return f"model files {fa} vs {fb}"
    return None


def _values_differ(x: Any, y: Any, path: str = "") -> str | None:
    if isinstance(x, dict) and isinstance(y, dict):
        if set(x) != set(y):
            return f"{path or '/'}: keys {sorted(map(str, x))} vs {sorted(map(str, y))}"
        for k in x:
            d = _values_differ(x[k], y[k], f"{path}/{k}")
            if d:
                return d
        return None
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        if len(x) != len(y):
            return f"{path}: {len(x)} vs {len(y)} items"
        for i, (u, v) in enumerate(zip(x, y)):
            d = _values_differ(u, v, f"{path}/{i}")
            if d:
                return d
        return None
    if isinstance(x, (int, float, np.number)) and isinstance(y, (int, float, np.number)) \
            and not isinstance(x, bool) and not isinstance(y, bool):
        if (math.isnan(float(x)) and math.isnan(float(y))) or math.isclose(float(x), float(y), rel_tol=1e-5,
                                                                               abs_tol=1e-7):
            return None
        return f"{path}: {x!r} vs {y!r}"
    return None if x == y else f"{path}: {x!r} vs {y!r}"


# -- which checks apply -----------------------------------------------------------------------
STATIC_CHECKS = (check_class_attributes, check_schema, check_schema_defaults, check_init_stores_params,
                 check_artifact_types, check_run_signature)
RUN_CHECKS = (check_run_outputs, check_output_content, check_deterministic, check_cache_round_trip)


def checks_for(cls: type[Component]) -> list[Callable[[Subject], None]]:
    """The checks that apply to ``cls``, static ones first."""
    checks = list(STATIC_CHECKS)
    kind = getattr(cls, "kind", "")
    if kind == "executor":
        checks.append(check_executor_map)
    elif kind == "reporter":
        checks.append(check_reporter_writes)
    elif kind == "tracker":
        checks.append(check_tracker_track)
    elif kind in KINDS:
        checks += RUN_CHECKS
        read = {t.rstrip("?") for t in (getattr(cls, "inputs", None) or {}).values()}
        checks += [make_edge_check(v) for v in EDGE_CASES.get(kind, ()) if VARIANT_TYPES[v] & read]
    return checks
