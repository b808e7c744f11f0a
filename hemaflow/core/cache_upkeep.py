"""Locks and housekeeping of the step cache (:mod:`hemaflow.core.cache`), as the mixin
:class:`CacheUpkeep` of :class:`~hemaflow.core.cache.StepCache` (it needs only ``self.root``):
one OS file lock per key (``locks/<key>.lock``, with an ``.owner`` note naming the holder),
orphaned work folders in ``tmp/`` (their process gone, or old and unlocked) and their removal,
and the listing of every entry (:class:`EntryInfo`, for ``hemaflow cache ls`` and ``prune``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from hemaflow.core.cache_manifest import STEP_JSON, _walk_files

ORPHAN_AGE_S = 24 * 3600
"""A work directory in ``tmp/`` older than this whose key is not locked is an orphan."""

_TMP = re.compile(r"^(?P<key>[0-9a-f]{16,64})-(?P<pid>\d+)-(?:(?P<host>[0-9a-f]{8})-)?(?:trash-)?[0-9a-f]{8}$")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@dataclass
class EntryInfo:
    """One finished entry, for ``hemaflow cache ls`` and ``prune``."""

    key: str
    path: Path
    info: dict[str, Any] | None  # step.json, None if unreadable
    size: int  # bytes on disk
    last_used: float  # epoch seconds (entry folder mtime: set at commit and on every cache hit)


class CacheUpkeep:
    """Locks and housekeeping of a cache directory ``self.root`` (mixed into ``StepCache``)."""

    root: Path

    # -- concurrency ---------------------------------------------------------------------------
    def lock_path(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.lock"

    @contextlib.contextmanager
    def lock(self, key: str, *, timeout: float | None = None,
             on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
        """Hold the lock of ``key`` while the block runs; yields True, or False when another run
        held it for longer than ``timeout`` seconds (default ``$HEMAFLOW_CACHE_LOCK_TIMEOUT``,
        else 3600): the caller then computes the step anyway (correct, only twice the work).

        ``on_wait`` is called once with a message naming the holder when the lock is busy.
        """
        from filelock import FileLock, Timeout

        if timeout is None:
            try:
                timeout = float(os.environ.get("HEMAFLOW_CACHE_LOCK_TIMEOUT", "3600"))
            except ValueError:
                timeout = 3600.0
        path = self.lock_path(key)
        lock = FileLock(str(path))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire(blocking=False)
        except Timeout:  # (a TimeoutError, so an OSError: caught first)
            if on_wait is not None:
                on_wait(self._holder(path))
            try:
                lock.acquire(timeout=timeout, poll_interval=0.2)
            except Timeout:
                yield False
                return
        except OSError:  # cannot lock here (read-only cache...): go on unlocked, as before locks existed
            yield True
            return
        try:
            with contextlib.suppress(OSError):
                path.with_suffix(".owner").write_text(f"{os.getpid()} {socket.gethostname()}")
            yield True
        finally:
            lock.release()

    @staticmethod
    def _holder(path: Path) -> str:
        try:
            pid, host = path.with_suffix(".owner").read_text().split(" ", 1)
            return f"pid {pid} on {host}"
        except (OSError, ValueError):
            return "another run"

    def is_locked(self, key: str) -> bool:
        from filelock import FileLock, Timeout

        path = self.lock_path(key)
        if not path.exists():
            return False
        lock = FileLock(str(path))
        try:
            lock.acquire(blocking=False)
        except Timeout:
            return True
        lock.release()
        return False

    # -- housekeeping --------------------------------------------------------------------------
    def orphans(self, max_age: float = ORPHAN_AGE_S) -> list[Path]:
        """Work folders in ``tmp/`` that no live run is writing: their process (on this machine)
        is gone, or they are older than ``max_age`` seconds and their key is not locked. Only
        names hemaflow gives its work folders count."""
        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return []
        me, now, out = _host_tag(), time.time(), []
        for p in sorted(tmp.iterdir()):
            m = _TMP.match(p.name)
            if m is None:  # not named by hemaflow: never touched (the cache dir may be set to a wrong place)
                continue
            here = m["host"] in (None, me)  # written on this machine (pids mean something)
            if here and int(m["pid"]) == os.getpid():
                continue
            if here and not pid_alive(int(m["pid"])):
                out.append(p)
                continue
            try:
                old = now - p.lstat().st_mtime > max_age
            except OSError:
                continue
            if old and not (len(m["key"]) == 64 and self.is_locked(m["key"])):
                out.append(p)
        return out

    def clean_orphans(self, max_age: float = ORPHAN_AGE_S) -> list[Path]:
        """Remove :meth:`orphans`; return what was removed."""
        removed = []
        for p in self.orphans(max_age):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            if not p.exists():
                removed.append(p)
        return removed

    def entries(self) -> Iterator[EntryInfo]:
        """Every folder in ``steps/`` (finished or damaged), oldest use first is up to the caller."""
        steps = self.root / "steps"
        if not steps.is_dir():
            return
        for shard in sorted(steps.iterdir()):
            if not shard.is_dir():
                continue
            for path in sorted(shard.iterdir()):
                try:
                    files = _walk_files(path)[0] if path.is_dir() and not path.is_symlink() else {}
                    last_used = path.lstat().st_mtime
                except OSError:
                    continue
                try:
                    info = json.loads((path / STEP_JSON).read_text())
                except (OSError, ValueError):
                    info = None
                yield EntryInfo(path.name, path, info if isinstance(info, dict) else None,
                                sum(st.st_size for st in files.values()), last_used)
