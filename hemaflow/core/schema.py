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
