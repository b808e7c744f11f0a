"""The conformance checks: each takes a :class:`~hemaflow.testing.subject.Subject` and raises
:class:`~hemaflow.testing.ConformanceError` saying what to fix.

Static checks read the class; run checks run the component on the tiny inputs of
:mod:`hemaflow.testing.fixtures` the way the runner does and inspect what comes back
(:mod:`hemaflow.testing.content`). Runs are shared between the checks of one subject.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from pathlib import Path
from typing import Callable

import jsonschema

from hemaflow.core.component import KINDS, Component
from hemaflow.core.errors import HemaflowError
from hemaflow.testing.content import check_artifact_content, compare_content
from hemaflow.testing.subject import ConformanceError, NotRun, Subject, fail

__all__ = ["ConformanceError", "NotRun", "Subject", "checks_for"]

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
    if s.skip_run:  # its fingerprint may read data that is not on this machine
        return
    fp = comp.fingerprint()
    if fp is not None and not isinstance(fp, str):
        fail(s, f"fingerprint() returned {type(fp).__name__}; return a str hash or None")
    if s.cls(**copy.deepcopy(params)).fingerprint() != fp:
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
    if s.skip_run:  # e.g. its optional package is not installed here
        raise NotRun(s.skip_run)
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
