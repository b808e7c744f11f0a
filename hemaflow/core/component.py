"""Components and the context the runner hands them.

A component is a class registered under a ``name`` for one ``kind`` (see
:mod:`hemaflow.core.hookspecs`). It follows the scikit-learn contract: ``__init__`` only stores
the validated parameters (defaults already filled in from ``schema``), ``get_params()`` returns
them, and all work happens in ``run``::

    class Grey(Component):
        kind = "normalizer"
        name = "grey"
        version = "1"
        schema = {"type": "object", "properties": {"gamma": {"type": "number", "default": 1.0}},
                  "additionalProperties": False}
        inputs = {"images": "ImageSet"}
        outputs = {"images": "ImageSet"}

        def run(self, ctx, images):
            ...
            return {"images": new_image_set}
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, TypeVar

import numpy as np

from hemaflow.core.kinds import KINDS  # noqa: F401  (the one list of kinds, re-exported)
from hemaflow.core.report_items import ReportItems

T = TypeVar("T")
R = TypeVar("R")

class Component:
    """Base of every registered component.

    Class attributes:
        kind: one of :data:`KINDS`.
        name: the name recipes use in ``uses:``.
        version: bump when results change; part of the cache key.
        schema: JSON Schema (2020-12) of the ``with:`` parameters; ``default`` values are filled
            in before ``__init__``. Use ``"additionalProperties": False`` so typos are caught.
        inputs: input name -> artifact type name. A trailing ``?`` on the type (``"Split?"``)
            marks an optional input.
        outputs: output name -> artifact type name. The first output is the step's default.
    """

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }
    inputs: ClassVar[dict[str, str]] = {}
    outputs: ClassVar[dict[str, str]] = {}

    def __init__(self, **params: Any) -> None:
        self.params = params

    def get_params(self) -> dict[str, Any]:
        """Return the parameters this component was built with (recorded in provenance)."""
        return copy.deepcopy(self.params)

    def check_params(self) -> list[tuple[str, str]]:
        """Problems with the parameters that JSON Schema cannot see (an unknown model name, a
        missing local file), as ``(json pointer below with/, message)`` pairs; empty when fine.

        Called by ``hemaflow validate`` and before ``hemaflow run`` starts anything, once the
        parameters passed the schema.
        """
        return []

    def cache_params(self) -> dict[str, Any]:
        """Return the parameters that enter the step's cache key (default: all of them).

        Override to leave out what cannot change the outputs, e.g. the *path* of a weights file
        whose content hash :meth:`fingerprint` already gives (so the same weights under another
        name are recognised), or training options of a step that does not train.
        """
        return self.params

    def fingerprint(self) -> str | None:
        """Return a hash of external data this component reads (data sets), else None.

        The hash is part of the cache key, so a changed file on disk invalidates the step.
        Single local files named by a parameter need no code here: see :meth:`input_files`.
        """
        return None

    def input_files(self) -> dict[str, Path]:
        """Local files (or folders) this step reads that are not upstream artifacts, by the JSON
        pointer of their parameter below ``with:`` (``{"/pretrained": Path("w.safetensors")}``).

        The runner puts each one's content hash (SHA-256, memoized by stat signature, see
        :mod:`hemaflow.core.filehash`) into the step's cache key in place of the path: new
        weights under the same name recompute, the same weights under another name are reused.
        The default lists every string parameter whose schema says ``"format": "path"`` (also
        inside nested objects); override to add files a parameter names indirectly (e.g. a
        shipped model name).
        """
        return {ptr: Path(value).expanduser() for ptr, value in path_params(self.schema, self.params)}

    def run(self, ctx: "RunContext", **inputs: Any) -> dict[str, Any]:
        """Do the work. Return a dict output name -> Artifact (keys as in ``outputs``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class Executor(Component):
    """Kind ``executor``: the recipe's ``executor: {uses: NAME}``; how ``ctx.map`` runs a
    function over items. No inputs, no outputs.

    ``map(fn, items, *, progress=None)`` returns ``[fn(item) for item in items]`` in item order;
    ``fn`` is a picklable top-level function; call ``progress(1)`` after each item when given.
    The base implementation is serial. (Re-exported by :mod:`hemaflow.core.bases`.)
    """

    kind = "executor"

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, progress: Callable | None = None) -> list[R]:
        out = []
        for item in items:
            out.append(fn(item))
            if progress is not None:
                progress(1)
        return out

    def close(self) -> None:
        """Release what the executor holds (a cluster, a connection); the runner calls it when
        the steps are done. A later ``map`` may start again."""


class RunContext:
    """What a step's ``run`` gets besides its inputs.

    Attributes:
        step_id: the step's id in the recipe.
        seed: the recipe's global seed (int).
        device: ``"cpu"`` or ``"cuda"`` (``auto`` already resolved).
        workdir: an empty directory that becomes the step's cache entry; write output
            artifacts below it (use :meth:`out_dir`).
        report: :class:`ReportItems` for figures/tables shown in ``report.html``.
        recipe: the resolved recipe (read-only dict).
    """

    def __init__(
        self,
        *,
        step_id: str,
        workdir: Path,
        seed: int = 0,
        device: str = "cpu",
        executor: Executor | None = None,
        progress_factory: Callable[..., Any] | None = None,
        recipe: dict[str, Any] | None = None,
        log: Callable[[str], None] | None = None,
        verbose: bool = False,
    ) -> None:
        self.step_id = step_id
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.seed = int(seed)
        self.device = device
        self.executor = executor or Executor()
        self.recipe = recipe or {}
        self.report = ReportItems(self.workdir / "_report")
        self.warnings: list[str] = []
        self._progress_factory = progress_factory
        self._log = log
        self.verbose = verbose

    # -- files -----------------------------------------------------------------------------
    def out_dir(self, name: str) -> Path:
        """Return (and create) the directory for output artifact ``name``."""
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def scratch_dir(self) -> Path:
        """Return a scratch directory inside the step's work area (discarded with it)."""
        path = self.workdir / "_scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- randomness --------------------------------------------------------------------------
    def rng(self, *salt: int | str) -> np.random.Generator:
        """Return a numpy Generator seeded from the global seed, the step id and ``salt``."""
        import hashlib

        text = "|".join([str(self.seed), self.step_id, *map(str, salt)])
        digest = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return np.random.default_rng(digest)

    def torch_seed(self, *salt: int | str) -> int:
        """Return an int seed for torch, derived like :meth:`rng`."""
        return int(self.rng(*salt).integers(0, 2**31 - 1))

    # -- feedback ----------------------------------------------------------------------------
    def log(self, message: str) -> None:
        """Print a line of progress information (not a warning)."""
        if self._log is not None:
            self._log(f"[{self.step_id}] {message}")

    def debug(self, message: str) -> None:
        """Print detail (e.g. one line per training epoch) only with ``hemaflow run --verbose``."""
        if self.verbose:
            self.log(message)

    def warn(self, message: str) -> None:
        """Record a warning (e.g. a skipped image); it lands in provenance and the report."""
        self.warnings.append(message)
        self.log(f"warning: {message}")

    def progress(self, items: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
        """Iterate over ``items`` showing a progress bar for long work."""
        if total is None:
            try:
                total = len(items)  # type: ignore[arg-type]
            except TypeError:
                total = None
        if self._progress_factory is None:
            yield from items
            return
        with self._progress_factory(description or self.step_id, total) as advance:
            for item in items:
                yield item
                advance(1)

    def map(self, fn: Callable[[T], R], items: Iterable[T], description: str = "") -> list[R]:
        """Run ``fn`` over ``items`` with the recipe's executor; results in item order."""
        items = list(items)
        if self._progress_factory is None:
            return self.executor.map(fn, items)
        with self._progress_factory(description or self.step_id, len(items)) as advance:
            return self.executor.map(fn, items, progress=advance)


def path_params(schema: dict[str, Any], params: Any, prefix: str = "") -> list[tuple[str, str]]:
    """``(json pointer, value)`` of the non-empty string values of ``params`` whose schema
    property has ``"format": "path"``, recursing into nested object properties."""
    out: list[tuple[str, str]] = []
    if not isinstance(schema, dict) or not isinstance(params, dict):
        return out
    for name, sub in (schema.get("properties") or {}).items():
        if not isinstance(sub, dict) or name not in params:
            continue
        ptr = f"{prefix}/{name.replace('~', '~0').replace('/', '~1')}"
        value = params[name]
        if sub.get("format") == "path" and isinstance(value, str) and value:
            out.append((ptr, value))
        elif isinstance(value, dict):
            out.extend(path_params(sub, value, ptr))
    return out


def key_params(comp: Component) -> tuple[dict[str, Any], dict[str, str | None]]:
    """What of ``comp`` enters its step's cache key: its :meth:`~Component.cache_params`, with
    the value of each :meth:`~Component.input_files` parameter replaced by ``"<file>"``, and the
    files' content hashes by pointer (None for a file that does not exist; empty when the
    component reads no such file, so its key is what it was before files were hashed)."""
    from hemaflow.core.filehash import path_sha256

    params = comp.cache_params()
    files = {ptr: path_sha256(path) for ptr, path in sorted(comp.input_files().items())}
    if files:
        params = copy.deepcopy(params)
        for ptr in files:
            if not ptr.startswith("/"):
                continue
            *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in ptr.split("/")[1:]]
            node: Any = params
            for name in parents:
                node = node.get(name) if isinstance(node, dict) else None
            if isinstance(node, dict) and last in node:
                node[last] = "<file>"
    return params, files


def cpu_count() -> int:
    """Number of CPUs this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1
