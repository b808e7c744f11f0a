"""Executors: how ``ctx.map`` runs a function over items (serial or a process pool)."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any, Callable, Iterable

from hemaflow.core.component import Executor, cpu_count
from hemaflow.core.markers import hookimpl


def _worker_init() -> None:
    """Keep each worker single-threaded inside: a forked child inheriting torch's (or BLAS's)
    thread pools from a parent that already used them can deadlock, and two workers on two
    cores gain nothing from nested threads anyway."""
    import os
    import sys

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


class SerialExecutor(Executor):
    """Runs items one after another in this process (the default)."""

    name = "serial"


class ProcessExecutor(Executor):
    """Runs items in a pool of worker processes; results come back in item order."""

    name = "processes"
    schema = {
        "type": "object",
        "properties": {
            "workers": {"type": "integer", "minimum": 0, "default": 0,
                        "description": "number of worker processes; 0 means one per CPU"},
            "chunksize": {"type": "integer", "minimum": 1, "default": 1},
            "start_method": {"enum": ["fork", "spawn", "forkserver"], "default": "fork"},
        },
        "additionalProperties": False,
    }

    def map(self, fn: Callable, items: Iterable, *, progress: Callable | None = None) -> list[Any]:
        items = list(items)
        workers = self.params.get("workers") or cpu_count()
        if workers <= 1 or len(items) <= 1:
            return super().map(fn, items, progress=progress)
        ctx = mp.get_context(self.params.get("start_method", "fork"))
        out = []
        with ctx.Pool(min(workers, len(items)), initializer=_worker_init) as pool:
            for result in pool.imap(fn, items, chunksize=self.params.get("chunksize", 1)):
                out.append(result)
                if progress is not None:
                    progress(1)
        return out


@hookimpl
def register_executors(register: Any) -> None:
    register(SerialExecutor)
    register(ProcessExecutor)
