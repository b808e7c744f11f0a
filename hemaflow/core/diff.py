"""Semantic diff of resolved recipes (and any nested dicts)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

MISSING = object()


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts to dotted keys; lists and scalars are leaves.

    >>> flatten({"steps": {"mil": {"with": {"epochs": 3}}}})
    {'steps.mil.with.epochs': 3}
    """
    out: dict[str, Any] = {}
    if isinstance(d, dict) and d:
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = d
    return out


@dataclass(frozen=True)
class Change:
    """One differing key: ``old``/``new`` are :data:`MISSING` when absent on that side."""

    key: str
    old: Any
    new: Any

    @property
    def kind(self) -> str:
        if self.old is MISSING:
            return "added"
        if self.new is MISSING:
            return "removed"
        return "changed"


def diff(a: dict[str, Any], b: dict[str, Any], *, ignore: tuple[str, ...] = ()) -> list[Change]:
    """Return the keys whose values differ between nested dicts ``a`` and ``b``, in order."""
    fa, fb = flatten(a), flatten(b)
    keys = list(fa) + [k for k in fb if k not in fa]
    out = []
    for k in keys:
        if any(k == i or k.startswith(i + ".") for i in ignore):
            continue
        va, vb = fa.get(k, MISSING), fb.get(k, MISSING)
        if not _same(va, vb):
            out.append(Change(k, va, vb))
    return out


def _same(a: Any, b: Any) -> bool:
    """Equal values; NaN equals NaN here (an undefined metric in both runs is no difference)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)
