"""Resolve a loaded recipe: validate it against the composed schema and fill defaults.

All problems are collected and raised together as one :class:`RecipeError`, each located as
``FILE:LINE:COL: /json/pointer: message``.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from hemaflow.core.errors import Problem, RecipeError, did_you_mean
from hemaflow.core.kinds import STEP_KINDS
from hemaflow.core.plugins import Registry
from hemaflow.core.recipe import Origin, Recipe, escape
from hemaflow.core.schema import base_schema, fill_defaults, message

DEFAULT_ORIGIN = Origin("default")


@dataclass
class StepSpec:
    """A validated step: its component class, parameters and input references."""

    id: str
    uses: str
    kind: str
    cls: type
    params: dict[str, Any]
    inputs: dict[str, tuple[str, str]]  # input name -> (step id, output name)


@dataclass
class Resolved:
    """A fully validated recipe with defaults filled in."""

    recipe: Recipe
    data: dict[str, Any]
    steps: list[StepSpec] = field(default_factory=list)  # in execution order

    @property
    def name(self) -> str:
        return str(self.data["name"])


def _problem(recipe: Recipe, ptr: str, msg: str, *, key: bool = False) -> Problem:
    o = recipe.locate(ptr, key=key)
    m = re.match(r"(.*?)/with(?:/|$)", ptr)
    base = m.group(1) if m else ""
    if m and ptr not in recipe.origins and base + "/with" not in recipe.origins and base + "/uses" in recipe.origins:
        o = recipe.origins[base + "/uses"]  # a parameter left at its default: point at the component named
    return Problem(o.source, o.line, o.col, ptr, msg)


def _schema_problems(recipe: Recipe, schema: dict[str, Any], instance: Any, prefix: str,
                     allowed_hint: bool = True) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for err in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
        base = prefix + "".join("/" + escape(p) for p in err.absolute_path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            allowed = list((err.schema.get("properties") or {}).keys())
            extra = [k for k in err.instance if k not in allowed]
            for k in extra:
                hint = did_you_mean(k, allowed)
                if not hint and allowed_hint and allowed:
                    hint = "; allowed keys: " + ", ".join(allowed)
                problems.append(_problem(recipe, f"{base}/{escape(k)}", f"unknown key {k!r}{hint}", key=True))
            continue
        if err.validator == "required":
            problems.append(_problem(recipe, base, f"missing required key {err.message.split(chr(39))[1]!r}"))
            continue
        problems.append(_problem(recipe, base, message(err)))
    return problems


def _component(recipe: Recipe, registry: Registry, ptr: str, name: Any, kinds: tuple[str, ...],
               problems: list[Problem]) -> tuple[str, type] | None:
    if not isinstance(name, str):
        return None
    for kind in kinds:
        if name in registry.components[kind]:
            return kind, registry.components[kind][name].cls
    known = [n for k in kinds for n in registry.components[k]]
    what = "component" if len(kinds) > 1 else f"{kinds[0]}"
    problems.append(_problem(recipe, ptr, f"unknown {what} {name!r}{did_you_mean(name, known)}"
                             + ("" if did_you_mean(name, known) else "; run `hemaflow plugins` to list them")))
    return None




def _check_params(recipe: Recipe, cls: type, params: Any, ptr: str, problems: list[Problem]) -> dict[str, Any]:
    params = copy.deepcopy(params) if isinstance(params, dict) else {}
    filled = fill_defaults(cls.schema, params)
    found = _schema_problems(recipe, cls.schema, filled, ptr)
    problems.extend(found)
    if not found:
        try:
            comp = cls(**filled)
            extra = list(comp.check_params())
            seen = {sub for sub, _ in extra}
            extra += [(sub, msg) for sub, msg in _file_problems(comp) if sub not in seen]
        except Exception as exc:  # a broken check must not hide the rest of the report
            extra = [("", f"could not check parameters: {type(exc).__name__}: {exc}")]
        for sub, msg in extra:
            problems.append(_problem(recipe, ptr + sub, msg))
    for key in filled:
        recipe.origins.setdefault(f"{ptr}/{escape(key)}", DEFAULT_ORIGIN)
    return filled


def _file_problems(comp: Any) -> list[tuple[str, str]]:
    """Local files a component names (:meth:`Component.input_files`) that are not there."""
    files = getattr(comp, "input_files", None)
    out = []
    for sub, path in (files() if callable(files) else {}).items():
        if not Path(path).exists():
            out.append((sub, f"{path}: file not found (a local file: hemaflow runs offline and downloads nothing)"))
    return out


def module_available(name: str) -> bool:
    """Whether the optional package ``name`` can be imported (without importing it).

    For :meth:`Component.check_params` of components with optional dependencies, e.g.
    ``[("", "needs MLflow: pip install 'hemaflow[mlflow]'")] if not module_available("mlflow")``.
    """
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def non_finite(value: Any, ptr: str = "") -> list[str]:
    """JSON pointers of the NaN and infinite numbers in ``value`` (JSON Schema cannot forbid them:
    every comparison with NaN is false, so ``minimum: 0`` lets ``.nan`` through)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [ptr]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite(v, f"{ptr}/{escape(k)}")]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in non_finite(v, f"{ptr}/{i}")]
    return []


def resolve(recipe: Recipe, registry: Registry) -> Resolved:
    """Validate ``recipe`` against the composed schema and fill defaults; raise RecipeError."""
    problems: list[Problem] = []
    data = copy.deepcopy(recipe.data)
    not_finite = non_finite(data)
    for ptr in not_finite:
        value = {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}[repr(_value_at(data, ptr))]
        problems.append(_problem(recipe, ptr, f"must be a finite number; got {value}"))
    problems += _schema_problems(recipe, base_schema(), data, "")
    if problems and not isinstance(data.get("steps"), dict):
        raise RecipeError(problems)
    for key in ("seed", "device", "executor", "report", "trackers"):
        if key not in data:
            data[key] = copy.deepcopy(base_schema()["properties"][key]["default"])
            recipe.origins.setdefault("/" + key, DEFAULT_ORIGIN)

    # executor, reporter, trackers
    for key, kinds in (("executor", ("executor",)), ("report", ("reporter",))):
        ref = data.get(key)
        if isinstance(ref, dict):
            found = _component(recipe, registry, f"/{key}/uses", ref.get("uses"), kinds, problems)
            if found:
                ref["with"] = _check_params(recipe, found[1], ref.get("with", {}), f"/{key}/with", problems)
    for tid, ref in (data.get("trackers") or {}).items():
        if isinstance(ref, dict):
            found = _component(recipe, registry, f"/trackers/{escape(tid)}/uses", ref.get("uses"), ("tracker",), problems)
            if found:
                ref["with"] = _check_params(recipe, found[1], ref.get("with", {}), f"/trackers/{escape(tid)}/with",
                                            problems)

    steps = data.get("steps") if isinstance(data.get("steps"), dict) else {}
    specs: dict[str, StepSpec] = {}
    for sid, step in steps.items():
        if not isinstance(step, dict):
            continue
        ptr = f"/steps/{escape(sid)}"
        found = _component(recipe, registry, f"{ptr}/uses", step.get("uses"), STEP_KINDS, problems)
        step.setdefault("with", {})
        step.setdefault("inputs", {})
        if not found:
            continue
        kind, cls = found
        _drop_foreign_params(recipe, sid, cls, step)
        step["with"] = _check_params(recipe, cls, step.get("with"), f"{ptr}/with", problems)
        specs[sid] = StepSpec(sid, step["uses"], kind, cls, step["with"], {})

    # inputs: names, references, types
    for sid, spec in specs.items():
        step = steps[sid]
        ptr = f"/steps/{escape(sid)}/inputs"
        declared = {k.rstrip("?"): v for k, v in spec.cls.inputs.items()}
        required = [k for k, t in spec.cls.inputs.items() if not k.endswith("?") and not t.endswith("?")]
        given = step.get("inputs") if isinstance(step.get("inputs"), dict) else {}
        for name, ref in given.items():
            iptr = f"{ptr}/{escape(name)}"
            if name not in declared:
                problems.append(_problem(recipe, iptr, f"{spec.uses} has no input {name!r}"
                                         f"{did_you_mean(name, declared) or '; its inputs: ' + (', '.join(declared) or 'none')}",
                                         key=True))
                continue
            if not isinstance(ref, str):
                continue
            src_id, _, out = ref.partition(".")
            if src_id not in steps:
                problems.append(_problem(recipe, iptr, f"no step {src_id!r}{did_you_mean(src_id, steps)}"))
                continue
            if src_id == sid:
                problems.append(_problem(recipe, iptr, "a step cannot take its own output as input"))
                continue
            src = specs.get(src_id)
            if src is None:
                continue
            outputs = src.cls.outputs
            if not outputs:
                problems.append(_problem(recipe, iptr, f"step {src_id!r} ({src.uses}) has no outputs"))
                continue
            out = out or next(iter(outputs))
            if out not in outputs:
                problems.append(_problem(recipe, iptr, f"step {src_id!r} ({src.uses}) has no output {out!r}; "
                                         f"its outputs: {', '.join(outputs)}"))
                continue
            want, have = declared[name].rstrip("?"), outputs[out]
            wt, ht = registry.artifact_types.get(want), registry.artifact_types.get(have)
            if wt is not None and ht is not None and not issubclass(ht, wt):
                problems.append(_problem(recipe, iptr, f"input {name!r} of {spec.uses} must be {want}; "
                                         f"{ref!r} gives {have}"))
                continue
            spec.inputs[name] = (src_id, out)
        for name in required:
            if name not in given:
                problems.append(_problem(recipe, ptr if "inputs" in recipe.data.get("steps", {}).get(sid, {})
                                         else f"/steps/{escape(sid)}",
                                         f"{spec.uses} needs input {name!r} ({spec.cls.inputs[name]}); "
                                         f"add inputs: {{{name}: <step id>}}"))

    order = _toposort(specs, recipe, problems)
    if problems:
        first = len(not_finite)  # the finite-number problem says it all for those values
        problems = problems[:first] + [p for p in problems[first:] if p.pointer not in not_finite]
        raise RecipeError(_dedupe(problems))
    return Resolved(recipe, data, [specs[s] for s in order])


def _drop_foreign_params(recipe: Recipe, sid: str, cls: type, step: dict[str, Any]) -> None:
    """A step whose ``uses:`` a later layer changed loses the inherited ``with:`` keys the new
    component does not accept (another component's parameters); noted for ``resolve --origins``."""
    change = getattr(recipe, "replaced_uses", {}).get(sid)
    params = step.get("with")
    props = (cls.schema or {}).get("properties")
    if change is None or not isinstance(params, dict) or props is None or cls.schema.get("additionalProperties", True):
        return
    ptr = f"/steps/{escape(sid)}/with"
    dropped = []
    for key in list(params):
        kptr = f"{ptr}/{escape(key)}"
        if key not in props and kptr in change.inherited and recipe.locate(kptr) == change.inherited[kptr]:
            del params[key]
            for d in (recipe.origins, recipe.key_origins):
                for p in [kptr, *[q for q in d if q.startswith(kptr + "/")]]:
                    d.pop(p, None)
            dropped.append(f"{key} ({change.inherited[kptr]})")
    if dropped:
        recipe.notes.append(f"{ptr}: dropped {', '.join(dropped)}: parameters of {change.old!r}, which "
                            f"{change.new!r} does not take ({change.changed_at} changes uses)")


def _value_at(data: Any, ptr: str) -> Any:
    for part in ptr.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        if (p.pointer, p.message) not in seen:
            seen.add((p.pointer, p.message))
            out.append(p)
    return out


def _toposort(specs: dict[str, StepSpec], recipe: Recipe, problems: list[Problem]) -> list[str]:
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(sid: str, path: list[str]) -> None:
        if state.get(sid) == 2:
            return
        if state.get(sid) == 1:
            cyc = path[path.index(sid):] + [sid]
            problems.append(_problem(recipe, f"/steps/{escape(sid)}/inputs", "steps form a cycle: " + " -> ".join(cyc)))
            return
        state[sid] = 1
        for src, _ in specs[sid].inputs.values():
            if src in specs:
                visit(src, path + [sid])
        state[sid] = 2
        order.append(sid)

    for sid in specs:
        visit(sid, [])
    return order
