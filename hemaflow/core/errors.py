"""hemaflow's one exception tree.

::

    HemaflowError                  base of everything hemaflow raises on purpose
    ├── UsageError                 bad command line (exit code 2)
    ├── RecipeError                invalid recipe: carries a list of Problem (exit code 1)
    ├── PluginError                broken plugin, duplicate or unknown component
    │   └── UnknownComponentError  a recipe names a component nobody registered
    ├── DataError                  bad input data: names the file and the problem
    ├── WorkerDiedError            a worker process of the executor died (killed, out of memory)
    ├── TaskTimeoutError           an item ran longer than the executor's per-item timeout
    ├── OutputError                a file of the run directory could not be written (disk full)
    └── StepError                  a step failed; wraps the cause, names step and component

User errors (everything above except a bare StepError wrapping a bug) are printed as
one clear line each on stderr, never as a traceback (``--debug`` shows tracebacks).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


class HemaflowError(Exception):
    """Base class of every error hemaflow raises on purpose."""

    exit_code = 3


class UsageError(HemaflowError):
    """The command line is wrong."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem in a recipe, located by file, line, column and JSON pointer."""

    file: str
    line: int
    col: int
    pointer: str
    message: str

    def __str__(self) -> str:
        loc = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{loc}: {self.pointer or '/'}: {self.message}"


class RecipeError(HemaflowError):
    """A recipe is invalid; ``problems`` lists every problem found, not just the first."""

    exit_code = 1

    def __init__(self, problems: Iterable[Problem] | Problem | str):
        if isinstance(problems, (Problem, str)):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PluginError(HemaflowError):
    """A plugin is broken, or two plugins register the same component name."""


class UnknownComponentError(PluginError):
    """A recipe names a component that no plugin registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name = kind, name
        self.suggestions = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
        msg = f"unknown {kind} component {name!r}"
        if self.suggestions:
            msg += "; did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
        super().__init__(msg)


class DataError(HemaflowError):
    """Input data is bad. The message names the file and says what is wrong."""

    def __init__(self, path: object, message: str):
        self.path, self.problem = str(path), message
        super().__init__(f"{path}: {message}")


class WorkerDiedError(HemaflowError):
    """A worker process died while items were being processed (SIGKILL, the out-of-memory killer).

    ``item`` names the item that worker was processing when known (else ``None``), ``cause``
    says how it died.
    """

    def __init__(self, item: str | None, cause: str):
        self.item, self.cause = item, cause
        where = f" while processing {item}" if item else ""
        super().__init__(f"a worker process died{where} ({cause}): lower the executor's workers or the image size")


class TaskTimeoutError(HemaflowError):
    """An item ran longer than the executor's per-item ``timeout`` (a hung task); its worker
    was stopped. ``item`` names the item, ``timeout`` is in seconds."""

    def __init__(self, item: str, timeout: float):
        self.item, self.timeout = item, timeout
        super().__init__(f"{item} did not finish within the executor's timeout of {timeout:g} s: its worker was "
                         "stopped (a hung task, or raise executor.with.timeout)")


class OutputError(HemaflowError):
    """A file of the run directory could not be written (disk full, read-only, no permission)."""

    def __init__(self, path: object, cause: OSError):
        self.path = str(path)
        super().__init__(f"{path}: cannot write the run directory: {cause.strerror or cause}")


class StepError(HemaflowError):
    """A step failed. ``__cause__`` holds the original exception."""

    def __init__(self, step_id: str, component: str, message: str):
        self.step_id, self.component = step_id, component
        super().__init__(f"step {step_id!r} ({component}): {message}")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for close matches of ``name`` in ``known``, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    if not close:
        return ""
    return "; did you mean " + " or ".join(repr(c) for c in close) + "?"
