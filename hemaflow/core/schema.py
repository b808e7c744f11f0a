"""The recipe schema, its composition with component schemas, defaults and validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "recipe.schema.json"


def fill_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill ``default`` values from an object schema into ``value`` (recursively); return it."""
    if not isinstance(schema, dict) or not isinstance(value, dict):
        return value
    for key, sub in (schema.get("properties") or {}).items():
        if not isinstance(sub, dict):
            continue
        if key not in value and "default" in sub:
            value[key] = copy.deepcopy(sub["default"])
        if key in value and isinstance(value[key], dict) and sub.get("type") == "object":
            fill_defaults(sub, value[key])
    return value


def base_schema() -> dict[str, Any]:
    """The recipe's own shape (``schemas/recipe.schema.json``)."""
    for p in (SCHEMA_PATH, Path(__file__).resolve().parent.parent / "schemas" / "recipe.schema.json"):
        if p.exists():
            return json.loads(p.read_text())
    raise FileNotFoundError("recipe.schema.json not found")  # pragma: no cover - broken install


def compose_schema(registry: Any) -> dict[str, Any]:
    """The recipe schema composed with every registered component's parameter schema.

    Each step's ``with`` is checked against the schema of the component it ``uses`` (through
    ``if``/``then``), so editors with JSON-Schema support complete and check parameters.
    """
    schema = base_schema()
    defs = schema["$defs"]
    branches: dict[str, list[dict[str, Any]]] = {"step": [], "executor": [], "reporter": [], "tracker": []}
    names: dict[str, list[str]] = {k: [] for k in branches}
    for kind, name, entry in registry.entries():
        defname = f"{kind}.{name}"
        defs[defname] = copy.deepcopy(entry.cls.schema)
        defs[defname].setdefault("description", (entry.cls.__doc__ or "").strip().split("\n")[0])
        group = kind if kind in ("executor", "reporter", "tracker") else "step"
        names[group].append(name)
        branches[group].append({
            "if": {"properties": {"uses": {"const": name}}, "required": ["uses"]},
            "then": {"properties": {"with": {"$ref": f"#/$defs/{defname}"}}},
        })
    step = defs["step"]
    step["properties"]["uses"]["enum"] = sorted(set(names["step"]))
    if branches["step"]:
        step["allOf"] = branches["step"]
    for group, prop in (("executor", "executor"), ("reporter", "report")):
        defs[f"{group}Ref"] = copy.deepcopy(defs["componentRef"])
        defs[f"{group}Ref"]["properties"]["uses"]["enum"] = sorted(names[group])
        if branches[group]:
            defs[f"{group}Ref"]["allOf"] = branches[group]
        schema["properties"][prop]["$ref"] = f"#/$defs/{group}Ref"
    defs["trackerRef"] = copy.deepcopy(defs["componentRef"])
    defs["trackerRef"]["properties"]["uses"]["enum"] = sorted(names["tracker"])
    if branches["tracker"]:
        defs["trackerRef"]["allOf"] = branches["tracker"]
    schema["properties"]["trackers"]["additionalProperties"] = {"$ref": "#/$defs/trackerRef"}
    return schema


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def message(error: Any) -> str:
    """Turn a jsonschema ValidationError into 'must be ...; got ...' wording."""
    v, val, inst = error.validator, error.validator_value, error.instance
    if v == "type":
        types = val if isinstance(val, list) else [val]
        article = {"integer": "an integer", "object": "a mapping", "array": "a list", "string": "a string",
                   "number": "a number", "boolean": "true or false", "null": "null"}
        return f"must be {' or '.join(article.get(t, t) for t in types)}; got {_short(inst)}"
    if v == "enum":
        return f"must be one of {', '.join(_short(x) for x in val)}; got {_short(inst)}"
    if v == "const":
        return f"must be {_short(val)}; got {_short(inst)}"
    if v == "minimum":
        return f"must be >= {val}; got {_short(inst)}"
    if v == "maximum":
        return f"must be <= {val}; got {_short(inst)}"
    if v == "exclusiveMinimum":
        return f"must be > {val}; got {_short(inst)}"
    if v == "exclusiveMaximum":
        return f"must be < {val}; got {_short(inst)}"
    if v == "minItems":
        return f"must have at least {val} item(s); got {len(inst)}"
    if v == "maxItems":
        return f"must have at most {val} item(s); got {len(inst)}"
    if v == "minProperties":
        return f"must have at least {val} entr{'y' if val == 1 else 'ies'}"
    if v == "pattern":
        return f"must match the pattern {val!r}; got {_short(inst)}"
    if v == "minLength":
        return f"must be at least {val} character(s) long; got {_short(inst)}"
    if v in ("oneOf", "anyOf"):
        return f"does not match any allowed form; got {_short(inst)}"
    return error.message
