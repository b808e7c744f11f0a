"""Helpers for testing hemaflow components, for built-in and third-party plugins alike.

Example::

    from hemaflow.testing import make_context, check_component

    def test_my_normalizer(tmp_path, image_set):
        check_component(MyNormalizer)
        ctx = make_context(tmp_path)
        out = MyNormalizer(**defaults(MyNormalizer)).run(ctx, images=image_set)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema

from hemaflow.core.component import KINDS, Component, RunContext


def defaults(cls: type[Component], **overrides: Any) -> dict[str, Any]:
    """Return the component's parameters with schema defaults filled in, plus ``overrides``."""
    from hemaflow.core.schema import fill_defaults

    params = fill_defaults(cls.schema, copy.deepcopy(overrides))
    jsonschema.Draft202012Validator(cls.schema).validate(params)
    return params


def make(cls: type[Component], **overrides: Any) -> Component:
    """Instantiate ``cls`` with its defaults and ``overrides`` (validated)."""
    return cls(**defaults(cls, **overrides))


def make_context(workdir: Path | str, *, step_id: str = "test", seed: int = 0, device: str = "cpu",
                 executor: Any = None) -> RunContext:
    """Return a RunContext writing into ``workdir`` (no progress bars)."""
    return RunContext(step_id=step_id, workdir=Path(workdir), seed=seed, device=device, executor=executor)


def check_component(cls: type[Component]) -> None:
    """Check that ``cls`` follows the component contract (raises AssertionError if not).

    Checks: kind and name set; schema is a valid JSON Schema object that rejects unknown keys;
    its defaults validate; ``__init__`` stores parameters only and ``get_params`` returns them;
    inputs/outputs name artifact types that are registered.
    """
    from hemaflow.core.plugins import build_registry, make_plugin_manager

    assert cls.kind in KINDS, f"{cls.__name__}.kind {cls.kind!r} is not one of {KINDS}"
    assert cls.name and cls.name.replace("_", "").replace("-", "").isalnum(), f"{cls.__name__}.name {cls.name!r}"
    assert isinstance(cls.version, str) and cls.version
    jsonschema.Draft202012Validator.check_schema(cls.schema)
    assert cls.schema.get("type") == "object", f"{cls.name}: schema must describe an object"
    assert cls.schema.get("additionalProperties") is False, f"{cls.name}: schema must set additionalProperties: false"
    params = defaults(cls)
    comp = cls(**params)
    assert comp.get_params() == params, f"{cls.name}: get_params() must return the constructor parameters"
    registry = build_registry(make_plugin_manager(entry_points=False))
    for what in (cls.inputs, cls.outputs):
        for name, tname in what.items():
            assert tname.rstrip("?") in registry.artifact_types, f"{cls.name}: unknown artifact type {tname!r} for {name!r}"
    if cls.kind not in ("reporter", "executor", "tracker"):
        assert cls.outputs, f"{cls.name}: declares no outputs"
