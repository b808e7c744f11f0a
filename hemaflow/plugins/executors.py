"""Executors: how ``ctx.map`` runs a function over items (serial or a process pool).

The process pool is :class:`concurrent.futures.ProcessPoolExecutor`, not
``multiprocessing.Pool``: when a worker dies (SIGKILL, the out-of-memory killer) a ``Pool``
never returns the lost task and the run hangs forever, while a ``ProcessPoolExecutor`` marks
itself broken and every pending result raises ``BrokenProcessPool``, which becomes a
:class:`~hemaflow.core.errors.WorkerDiedError` naming the item and the cause.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterable

from hemaflow.core.component import Executor, cpu_count
from hemaflow.core.errors import WorkerDiedError
from hemaflow.core.markers import hookimpl

# Per-item bookkeeping shared with the workers (set by _worker_init in each worker): the pid
# of the worker that started item i, and whether it finished. After a worker dies, the items
# started and never finished by a dead pid are the ones that were being processed.
_STARTED: Any = None
_DONE: Any = None


def _worker_init(started: Any = None, done: Any = None) -> None:
    """Keep each worker single-threaded inside: a forked child inheriting torch's (or BLAS's)
    thread pools from a parent that already used them can deadlock, and two workers on two
    cores gain nothing from nested threads anyway."""
    import sys

    global _STARTED, _DONE
    _STARTED, _DONE = started, done
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


class _Tracked:
    """``fn`` called on ``(index, item)``, recording which worker started and finished it."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, pair: tuple[int, Any]) -> Any:
        i, item = pair
        if _STARTED is not None:
            _STARTED[i] = os.getpid()
        out = self.fn(item)
        if _DONE is not None:
            _DONE[i] = 1
        return out


def describe_item(item: Any, limit: int = 80) -> str:
    """A short name for an item in an error message: a path's text, a record's id or path,
    the first element of a tuple, else a cut ``repr``."""
    if isinstance(item, dict):
        for key in ("path", "id", "image", "name"):
            if key in item and isinstance(item[key], (str, Path, int)):
                return describe_item(item[key], limit)
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], (str, Path, int)):
        return describe_item(item[0], limit)
    text = str(item) if isinstance(item, (str, Path)) else repr(item)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cause(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            return f"killed by {name}, likely out of memory"
        return f"killed by {name}"
    if exitcode is not None:
        return f"exited with code {exitcode}"
    return "killed, likely out of memory"


class SerialExecutor(Executor):
    """Runs items one after another in this process (the default)."""

    name = "serial"


class ProcessExecutor(Executor):
    """Runs items in a pool of worker processes; results come back in item order.

    A worker that dies (killed, out of memory) fails the map within moments with
    :class:`~hemaflow.core.errors.WorkerDiedError` naming the item it was processing;
    it never hangs.
    """

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
        # each slot is written by one worker only, so no lock is needed
        started = ctx.Array("q", len(items), lock=False)
        done = ctx.Array("b", len(items), lock=False)
        pool = ProcessPoolExecutor(min(workers, len(items)), mp_context=ctx, initializer=_worker_init,
                                   initargs=(started, done))
        out: list[Any] = []
        procs: dict[int, Any] = {}
        try:
            results = pool.map(_Tracked(fn), enumerate(items), chunksize=self.params.get("chunksize", 1))
            procs = dict(getattr(pool, "_processes", None) or {})  # every worker exists once all is submitted
            for result in results:
                out.append(result)
                if progress is not None:
                    progress(1)
        except BrokenProcessPool as exc:
            procs.update(getattr(pool, "_processes", None) or {})
            pool.shutdown(wait=True, cancel_futures=True)
            raise self._worker_died(items, started, done, procs, len(out)) from exc
        except BaseException:
            # an item failed or Ctrl-C: stop at once (as Pool did) instead of finishing running tasks
            for proc in (getattr(pool, "_processes", None) or procs).values():
                proc.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return out

    @staticmethod
    def _worker_died(items: list, started: Any, done: Any, procs: dict[int, Any], n_done: int) -> WorkerDiedError:
        """Name the item a dead worker was processing and why it died, as far as is known."""
        codes = {pid: p.exitcode for pid, p in procs.items()}
        running = [i for i in range(len(items)) if started[i] and not done[i]]
        # the pool terminates (SIGTERM) the healthy workers after one dies: prefer the other deaths
        dead = [i for i in running if codes.get(started[i]) not in (None, -signal.SIGTERM)]
        culprits = dead or running
        if not culprits:
            return WorkerDiedError(None, _cause(None))
        i = culprits[0]
        return WorkerDiedError(f"item {i + 1} of {len(items)} ({describe_item(items[i])})",
                               _cause(codes.get(started[i])))


@hookimpl
def register_executors(register: Any) -> None:
    register(SerialExecutor)
    register(ProcessExecutor)
