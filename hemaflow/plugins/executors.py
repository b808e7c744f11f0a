"""Executors: how ``ctx.map`` runs a function over items (serial, a process pool, or Dask).

The process pool is :class:`concurrent.futures.ProcessPoolExecutor`, not
``multiprocessing.Pool``: when a worker dies (SIGKILL, the out-of-memory killer) a ``Pool``
never returns the lost task and the run hangs forever, while a ``ProcessPoolExecutor`` marks
itself broken and every pending result raises ``BrokenProcessPool``, which becomes a
:class:`~hemaflow.core.errors.WorkerDiedError` naming the item and the cause.

The ``dask`` executor runs the same maps on a ``dask.distributed`` cluster: a
``LocalCluster`` of worker processes started on first use, or an existing scheduler
(``address:``), e.g. one that dask-jobqueue started on SLURM. ``dask`` is imported only
when such an executor maps something.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterable

from hemaflow.core.component import Executor, cpu_count
from hemaflow.core.errors import HemaflowError, TaskTimeoutError, WorkerDiedError
from hemaflow.core.markers import hookimpl

# Per-item bookkeeping shared with the workers (set by _worker_init in each worker): the pid
# of the worker that started item i, and whether it finished. After a worker dies, the items
# started and never finished by a dead pid are the ones that were being processed.
_STARTED: Any = None
_DONE: Any = None
_STARTED_AT: Any = None  # when item i started (time.monotonic(): one clock for all processes of a machine)


def _exit_with_parent(parent: int | None = None, poll: float = 1.0) -> None:
    """End this worker within ``poll`` seconds once the process that started it is gone: a run
    killed with SIGKILL cannot stop its pool, and its workers would otherwise wait on the task
    queue forever, holding their memory. (A thread watching the parent pid: portable, and
    unlike PR_SET_PDEATHSIG not tied to the thread that happened to start the worker.)
    ``parent`` is the pid the pool was created in: a worker that starts after its run was already
    killed (reparented before this ran) ends at once instead of taking its new parent for the run."""
    if parent is None:
        parent = os.getppid()
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="hemaflow-parent-watch", daemon=True).start()


def _worker_init(started: Any = None, done: Any = None, started_at: Any = None, parent: int | None = None) -> None:
    """Keep each worker single-threaded inside: a forked child inheriting torch's (or BLAS's)
    thread pools from a parent that already used them can deadlock, and two workers on two
    cores gain nothing from nested threads anyway."""
    import sys

    global _STARTED, _DONE, _STARTED_AT
    _STARTED, _DONE, _STARTED_AT = started, done, started_at
    _exit_with_parent(parent)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


class _Tracked:
    """``fn`` called on ``(index, item)``, recording which worker started and finished it."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, pair: tuple[int, Any]) -> Any:
        i, item = pair
        if _STARTED_AT is not None:  # before the pid: a started item always has its time
            _STARTED_AT[i] = time.monotonic()
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
    if len(text) <= limit:
        return text
    if isinstance(item, Path) or (isinstance(item, str) and "/" in item):
        return "..." + text[3 - limit:]  # a long path: keep its end, the file's name
    return text[: limit - 3] + "..."


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


class _Watchdog(threading.Thread):
    """Kills the worker of an item that runs longer than ``timeout`` seconds (a hung task); the
    pool then breaks, and the map reports that item (``item`` is its index, else None)."""

    def __init__(self, timeout: float, started: Any, done: Any, started_at: Any, pool: ProcessPoolExecutor) -> None:
        super().__init__(name="hemaflow-executor-timeout", daemon=True)
        self.timeout, self.started, self.done, self.started_at, self.pool = timeout, started, done, started_at, pool
        self.item: int | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        n, first = len(self.done), 0  # items before `first` are done: not scanned again
        poll = min(1.0, max(0.05, self.timeout / 10))
        while not self.finished.wait(poll):
            while first < n and self.done[first]:
                first += 1
            now = time.monotonic()
            for i in range(first, n):
                pid, t0 = self.started[i], self.started_at[i]
                if pid and t0 and not self.done[i] and now - t0 > self.timeout:
                    proc = (getattr(self.pool, "_processes", None) or {}).get(pid)
                    if proc is not None:  # only a worker of this pool, never another process
                        self.item = i
                        proc.kill()
                        return

    def stop(self) -> None:
        self.finished.set()
        self.join()


class SerialExecutor(Executor):
    """Runs items one after another in this process (the default)."""

    name = "serial"
    version = "1"


class ProcessExecutor(Executor):
    """Runs items in a pool of worker processes; results come back in item order.

    A worker that dies (killed, out of memory) fails the map within moments with
    :class:`~hemaflow.core.errors.WorkerDiedError` naming the item it was processing;
    it never hangs. An item that never returns (a hung task) is stopped by ``timeout``
    (seconds per item, off by default): its worker is killed and the map fails with
    :class:`~hemaflow.core.errors.TaskTimeoutError` naming the item. With a timeout even one
    item, or ``workers: 1``, runs in a worker process, so that it can be stopped.
    """

    name = "processes"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "workers": {"type": "integer", "minimum": 0, "default": 0,
                        "description": "number of worker processes; 0 means one per CPU"},
            "chunksize": {"type": "integer", "minimum": 1, "default": 1},
            "start_method": {"enum": ["fork", "spawn", "forkserver"], "default": "fork"},
            "timeout": {"type": ["number", "null"], "exclusiveMinimum": 0, "default": None,
                        "description": "seconds one item may run in a worker; an item still running then fails "
                                       "the step naming it (its worker is stopped); none: no limit"},
        },
        "additionalProperties": False,
    }

    def map(self, fn: Callable, items: Iterable, *, progress: Callable | None = None) -> list[Any]:
        items = list(items)
        workers = self.params.get("workers") or cpu_count()
        timeout = self.params.get("timeout")
        if not items or (not timeout and (workers <= 1 or len(items) <= 1)):
            return super().map(fn, items, progress=progress)  # with a timeout even one item goes to a worker
        ctx = mp.get_context(self.params.get("start_method", "fork"))
        # each slot is written by one worker only, so no lock is needed
        started = ctx.Array("q", len(items), lock=False)
        done = ctx.Array("b", len(items), lock=False)
        started_at = ctx.Array("d", len(items), lock=False) if timeout else None
        pool = ProcessPoolExecutor(max(1, min(workers, len(items))), mp_context=ctx, initializer=_worker_init,
                                   initargs=(started, done, started_at,
                                             # a forkserver's workers are its children, not ours
                                             None if ctx.get_start_method() == "forkserver" else os.getpid()))
        watchdog = _Watchdog(float(timeout), started, done, started_at, pool) if timeout else None
        out: list[Any] = []
        procs: dict[int, Any] = {}
        try:
            if watchdog is not None:
                watchdog.start()
            results = pool.map(_Tracked(fn), enumerate(items), chunksize=self.params.get("chunksize", 1))
            procs = dict(getattr(pool, "_processes", None) or {})  # every worker exists once all is submitted
            for result in results:
                out.append(result)
                if progress is not None:
                    progress(1)
        except BrokenProcessPool as exc:
            procs.update(getattr(pool, "_processes", None) or {})
            pool.shutdown(wait=True, cancel_futures=True)
            if watchdog is not None:
                watchdog.stop()
                if watchdog.item is not None:  # the pool broke because the watchdog stopped a hung item
                    i = watchdog.item
                    raise TaskTimeoutError(f"item {i + 1} of {len(items)} ({describe_item(items[i])})",
                                           float(timeout)) from None
            raise self._worker_died(items, started, done, procs, len(out)) from exc
        except BaseException:
            # an item failed or Ctrl-C: stop at once (as Pool did) instead of finishing running tasks
            for proc in (getattr(pool, "_processes", None) or procs).values():
                proc.terminate()
            raise
        finally:
            if watchdog is not None and watchdog.is_alive():
                watchdog.stop()
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


def _run_chunk(fn: Callable, chunk: list) -> list:
    """A dask task: ``fn`` over a chunk of items, single-threaded inside like a pool worker."""
    import sys

    if "torch" in sys.modules and sys.modules["torch"].get_num_threads() != 1:
        sys.modules["torch"].set_num_threads(1)
    return [fn(item) for item in chunk]


def _run_marked(fn: Callable, item: Any, key: list[str]) -> list:
    """A retried item: first tell the scheduler it started (a synchronous call), so a worker
    that dies now is known to have died on this item, not on one queued before it."""
    from distributed import get_client

    get_client().set_metadata(key, True)
    return _run_chunk(fn, [item])


class DaskExecutor(Executor):
    """Runs items on a ``dask.distributed`` cluster; results come back in item order.

    Without ``address`` a ``LocalCluster`` of ``workers`` processes (one thread each) is started
    on the first map and kept for the rest of the run; with ``address`` (``tcp://host:8786``)
    the maps go to that scheduler's workers, which need hemaflow installed and the cache
    directory on a shared file system. Items are submitted in chunks of ``chunksize`` (0: about
    four chunks per worker, at most 64 items each). A chunk whose worker died (killed, out of
    memory) is retried once, item by item; an item whose worker dies again fails the map with
    :class:`~hemaflow.core.errors.WorkerDiedError` naming it. An exception raised by an item
    propagates unchanged, as with ``serial``. The executor is not part of any cache key.

    Example::

        executor: {uses: dask, with: {workers: 4}}
    """

    name = "dask"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "address": {"type": ["string", "null"], "minLength": 1, "default": None,
                        "description": "scheduler address of an existing cluster (tcp://host:8786); "
                                       "none: start a local cluster"},
            "workers": {"type": "integer", "minimum": 0, "default": 0,
                        "description": "worker processes of the local cluster; 0 means one per CPU"},
            "chunksize": {"type": "integer", "minimum": 0, "default": 0,
                          "description": "items per task; 0 chooses about four tasks per worker"},
            "connect_timeout": {"type": "number", "exclusiveMinimum": 0, "default": 30,
                                "description": "seconds to wait for the scheduler to answer"},
        },
        "additionalProperties": False,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._client: Any = None
        self._cluster: Any = None

    # -- the cluster -------------------------------------------------------------------------
    def client(self) -> Any:
        """The ``distributed.Client`` of this executor, connecting (or starting a cluster) once."""
        if self._client is not None:
            return self._client
        import logging

        import dask
        from distributed import Client, LocalCluster

        address = self.params.get("address")
        timeout = f"{self.params.get('connect_timeout', 30)}s"
        if address:
            try:
                self._client = Client(address, timeout=timeout, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise HemaflowError(f"dask executor: cannot reach the scheduler at {address}: {exc}") from exc
            return self._client
        workers = self.params.get("workers") or cpu_count()
        # the scheduler gives up on a task at the first worker that dies under it: this executor
        # retries such a chunk itself, item by item, to name the item that kills its worker.
        # Workers keep one thread per library (as pool workers) but not dask's default
        # MALLOC_TRIM_THRESHOLD_=65536: with it every freed image goes back to the system and the
        # next one faults its pages in again; image steps ran at half speed (benchmarks/run_all.py)
        environ = {k: v for k, v in dict(dask.config.get("distributed.nanny.pre-spawn-environ", {})).items()
                   if k != "MALLOC_TRIM_THRESHOLD_"}
        with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                              "distributed.worker.daemon": False,
                              "distributed.nanny.pre-spawn-environ": environ}):
            # no dashboard; the scheduler's small HTTP server on a free port of this machine only
            self._cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                         host="127.0.0.1", dashboard_address=":0",
                                         scheduler_kwargs={"dashboard": False}, silence_logs=logging.CRITICAL)
            self._client = Client(self._cluster, timeout=timeout, set_as_default=False)
        return self._client

    def close(self) -> None:
        """Disconnect, and stop the local cluster if this executor started one."""
        client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def __del__(self) -> None:  # a Runner dropped without close() must not leave workers behind
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def __getstate__(self) -> dict[str, Any]:
        return {"params": self.params}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["params"])

    # -- mapping -----------------------------------------------------------------------------
    def _chunks(self, n: int, workers: int) -> list[range]:
        size = self.params.get("chunksize") or max(1, min(64, -(-n // (4 * max(workers, 1)))))
        return [range(i, min(i + size, n)) for i in range(0, n, size)]

    def map(self, fn: Callable, items: Iterable, *, progress: Callable | None = None) -> list[Any]:
        items = list(items)
        if not items:
            return []
        if not self.params.get("address") and (len(items) <= 1 or (self.params.get("workers") or cpu_count()) <= 1):
            return super().map(fn, items, progress=progress)
        from distributed import KilledWorker, as_completed
        from distributed.comm.core import CommClosedError

        lost = (KilledWorker, CommClosedError)
        client = self.client()
        workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {}))) if self.params.get("address") \
            else (self.params.get("workers") or cpu_count())
        out: list[Any] = [None] * len(items)
        token = f"hemaflow-started-{uuid.uuid4().hex}"  # scheduler metadata: retried items that started
        pending: dict[Any, tuple[range, bool]] = {}
        for chunk in self._chunks(len(items), workers):
            fut = client.submit(_run_chunk, fn, [items[i] for i in chunk], pure=False)
            pending[fut] = (chunk, False)
        queue = as_completed(list(pending), loop=client.loop)
        try:
            for fut in queue:
                chunk, retried = pending.pop(fut)
                try:
                    results = fut.result()
                except lost as exc:
                    # the retry: the chunk's items one at a time, each alone on the cluster's
                    # attention (the next is submitted when the last has returned), so the item
                    # that kills its worker again is the one named, never a bystander whose
                    # worker (or whose result) was lost with it
                    for i in chunk:
                        again = client.submit(_run_marked, fn, items[i], [token, str(i)], pure=False)
                        try:
                            out[i] = again.result()[0]
                        except lost:
                            raise WorkerDiedError(f"item {i + 1} of {len(items)} ({describe_item(items[i])})",
                                                  "a dask worker died on it twice: killed, likely out of "
                                                  "memory") from exc
                    if progress is not None:
                        progress(len(chunk))
                    continue
                for i, result in zip(chunk, results):
                    out[i] = result
                if progress is not None:
                    progress(len(chunk))
        except BaseException:
            client.cancel(list(pending), force=True)
            raise
        return out


@hookimpl
def register_executors(register: Any) -> None:
    register(SerialExecutor)
    register(ProcessExecutor)
    register(DaskExecutor)
