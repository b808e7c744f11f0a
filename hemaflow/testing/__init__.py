"""hemaflow's conformance kit: checks that *run* a component, for built-in and third-party plugins.

Like scikit-learn's ``check_estimator``, :func:`check_component` runs every check that applies to
a component class and raises :class:`ConformanceError` (an ``AssertionError``) whose message
says what to fix. The checks read the class (kind, name, ``version`` a string, a schema whose
every property has a default or is required, artifact types that are registered, including a
plugin's own), then run the component the way the runner does on tiny built-in inputs
(:mod:`hemaflow.testing.fixtures`: smear images, masks, cells, features, bags, a split,
predictions) and check the outputs: declared names and types, columns such as ``patient_id``,
dtypes and value ranges (images RGB uint8, masks integer 0/1/2, probabilities in [0, 1]),
the same result for the same seed, the edge cases of the kind (a grey image, an empty mask, a
bag of one cell, a patient without cells, a fold that tests one class) and a cache round trip
(saved and loaded back, an output is unchanged).

Example::

    >>> import pandas as pd
    >>> from hemaflow.core.component import Component
    >>> from hemaflow.lib.imageio import write_png
    >>> from hemaflow.testing import check_component
    >>> class Invert(Component):
    ...     '''Invert the colours of every image.'''
    ...     kind, name, version = "normalizer", "invert", "1"
    ...     inputs, outputs = {"images": "ImageSet"}, {"images": "ImageSet"}
    ...     def run(self, ctx, images):
    ...         out, rows = ctx.out_dir("images"), []
    ...         for _, row in images.table.iterrows():
    ...             write_png(out / f"{row['image_id']}.png", 255 - images.read_image(row))
    ...             rows.append(dict(row, path=f"{row['image_id']}.png"))
    ...         return {"images": images.derive(out, pd.DataFrame(rows)).save()}
    >>> check_component(Invert)
    >>> Invert.version = 1
    >>> check_component(Invert)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hemaflow.testing.ConformanceError: ...version is 1 (int); it must be a non-empty string, e.g. version = "1"...

In a plugin's test suite, one test per check (the scaffold's tests do this)::

    from hemaflow.testing import parametrize_with_checks

    @parametrize_with_checks([Invert])
    def test_conformance(check):
        check()

Parameters and inputs: a component runs with its schema defaults; pass ``params={...}`` for
fast settings (few epochs) and ``inputs={name: fixtures -> Artifact}`` for an input type the kit
has no fixture for (``Model``, or a plugin's own type; a type may also provide a classmethod
``conformance_example(fixtures)``). Built-in components get fast settings from
:data:`hemaflow.testing.builtin.SETTINGS`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import jsonschema

from hemaflow.core.component import Component, RunContext
from hemaflow.testing.checks import ConformanceError, NotRun, Subject, checks_for
from hemaflow.testing.fixtures import Fixtures

__all__ = ["ConformanceError", "Fixtures", "check_component", "parametrize_with_checks", "iter_checks",
           "defaults", "make", "make_context"]


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


class Check:
    """One conformance check bound to a component: call it (``check()``) to run it."""

    def __init__(self, subject: Subject, fn: Callable[[Subject], None]) -> None:
        self.subject, self.fn = subject, fn
        self.name = fn.__name__

    @property
    def id(self) -> str:
        return f"{self.subject.cls.name or self.subject.cls.__name__}-{self.name}"

    def __call__(self) -> None:
        """Run the check; under pytest, a check the kit cannot run here is skipped with the reason."""
        try:
            self.fn(self.subject)
        except NotRun as exc:
            import pytest

            pytest.skip(f"{self.id}: not run: {exc}")

    def __repr__(self) -> str:
        return f"<Check {self.id}>"


_SUBJECTS: dict[tuple, Subject] = {}


def _subject(cls: type[Component], params: Any, inputs: dict[str, Any] | None,
             artifact_types: Iterable[type] = ()) -> Subject:
    """One Subject per (class, settings) per process, so checks share the component's runs."""
    skip = None
    if params is None and inputs is None:
        from hemaflow.testing.builtin import settings_for

        params, inputs, skip = settings_for(cls)
    key = (cls, repr(params), repr(sorted((inputs or {}).items())), tuple(artifact_types))
    if key not in _SUBJECTS:
        _SUBJECTS[key] = Subject(cls, params, dict(inputs or {}), tuple(artifact_types), skip)
    return _SUBJECTS[key]


def iter_checks(cls: type[Component], *, params: dict[str, Any] | Callable[[Path], dict[str, Any]] | None = None,
                inputs: dict[str, Any] | None = None, artifact_types: Iterable[type] = ()) -> Iterator[Check]:
    """Yield the checks that apply to ``cls`` (static ones first), each a callable :class:`Check`.

    Args:
        cls: the component class.
        params: overrides of the schema defaults (or ``root -> dict`` for parameters that name
            files the test must first write); default: the built-in settings, else none.
        inputs: input name -> Artifact, ``callable(fixtures) -> Artifact``, or None to leave an
            optional input out.
        artifact_types: extra Artifact subclasses to know (a plugin's own types are found through
            its entry point or a ``register_artifact_types`` hook in the component's module).
    """
    subject = _subject(cls, params, inputs, artifact_types)
    for fn in checks_for(cls):
        yield Check(subject, fn)


def check_component(cls: type[Component], **kwargs: Any) -> None:
    """Run every check of :func:`iter_checks` on ``cls``; raise :class:`ConformanceError` at the first failure.

    The component's runs are shared with earlier checks of the same class and settings in this
    process (the determinism check runs it twice, each edge case once more).
    """
    for check in iter_checks(cls, **kwargs):
        try:
            check.fn(check.subject)
        except NotRun:  # a built-in that needs data on disk: its static checks ran
            continue


def parametrize_with_checks(classes: Iterable[type[Component]], **kwargs: Any) -> Any:
    """A ``pytest.mark.parametrize`` over every check of every class in ``classes`` (one test
    each, with ids like ``invert-check_deterministic``); the test takes one argument, ``check``,
    and calls it. Keyword arguments go to :func:`iter_checks` for every class.

    Example::

        @parametrize_with_checks([Invert, MySegmenter])
        def test_conformance(check):
            check()
    """
    import pytest

    checks = [c for cls in classes for c in iter_checks(cls, **kwargs)]
    return pytest.mark.parametrize("check", checks, ids=[c.id for c in checks])
