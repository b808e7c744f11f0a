"""Content hashes of the local files a step reads (weights, parameter files, label tables).

:func:`file_sha256` streams a file through SHA-256 once and remembers the digest under the
file's stat signature (real path, device, inode, size, ``mtime_ns``, ``ctime_ns``): a 4 GB
checkpoint is hashed once per process, and, once the runner has attached a cache directory
(:func:`attach`), once per machine: digests of files of at least :data:`PERSIST_MIN_BYTES` are
kept in ``<cache>/hashes.json``. Any write to the file changes ``mtime``/``ctime`` (``ctime``
even when a tool restores ``mtime``), so a changed file is always hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from hemaflow.core import atomic

PERSIST_MIN_BYTES = 1 << 20
"""Files at least this big have their digest kept in the cache directory's ``hashes.json``."""

PERSIST_MAX_ENTRIES = 4000
BLOCK = 8 << 20

_memo: dict[tuple, str] = {}
_lock = threading.Lock()
_persist_path: Path | None = None
_persisted: dict[str, list] | None = None


def attach(cache_root: Path | str | None) -> None:
    """Keep digests of big files in ``<cache_root>/hashes.json`` (None: in this process only)."""
    global _persist_path, _persisted
    with _lock:
        _persist_path = Path(cache_root) / "hashes.json" if cache_root is not None else None
        _persisted = None


def _signature(path: Path) -> tuple[str, tuple]:
    real = os.path.realpath(path)
    st = os.stat(real)
    return real, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _valid(rec: object) -> bool:
    return (isinstance(rec, list) and len(rec) == 2 and isinstance(rec[0], list) and isinstance(rec[1], str)
            and len(rec[1]) == 64)


def _load_persisted() -> dict[str, list]:
    global _persisted
    if _persisted is None:
        _persisted = {}
        if _persist_path is not None:
            try:
                data = json.loads(_persist_path.read_text())
                if isinstance(data, dict):
                    _persisted = {k: v for k, v in data.items() if _valid(v)}
            except (OSError, ValueError):
                pass  # a missing or damaged memo only costs a re-hash
    return _persisted


def _save_persisted(real: str, sig: tuple, digest: str) -> None:
    if _persist_path is None:
        return
    memo = _load_persisted()
    # merge with what other processes wrote since we read it; last writer wins (a lost entry is a re-hash)
    try:
        disk = json.loads(_persist_path.read_text())
        if isinstance(disk, dict):
            memo.update({k: v for k, v in disk.items() if k not in memo and _valid(v)})
    except (OSError, ValueError):
        pass
    memo[real] = [list(sig), digest]
    while len(memo) > PERSIST_MAX_ENTRIES:
        memo.pop(next(iter(memo)))
    try:
        _persist_path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(_persist_path, json.dumps(memo), fsync=False)
    except OSError:
        pass  # a read-only cache directory: the memo stays in this process


def sha256_stream(path: Path | str) -> str:
    """SHA-256 hex digest of a file's content, read in 8 MiB blocks (no memo)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path | str) -> str:
    """SHA-256 hex digest of a regular file's content, memoized by its stat signature.

    Raises:
        OSError: the file cannot be read (FileNotFoundError when it is missing).
    """
    real, sig = _signature(Path(path).expanduser())
    with _lock:
        hit = _memo.get((real, sig))
        if hit is None:
            rec = _load_persisted().get(real)
            if rec is not None and tuple(rec[0]) == sig:
                hit = _memo[(real, sig)] = str(rec[1])
    if hit is not None:
        return hit
    digest = sha256_stream(real)
    if _signature(Path(real))[1] != sig:  # written to while we read it: hash what is there now
        return file_sha256(real)
    with _lock:
        _memo[(real, sig)] = digest
        if sig[2] >= PERSIST_MIN_BYTES:
            _save_persisted(real, sig, digest)
    return digest


def path_sha256(path: Path | str) -> str | None:
    """Content hash of a file, or of a folder (every file below it: relative path and content);
    None when ``path`` does not exist (the component reports that itself)."""
    p = Path(path).expanduser()
    if p.is_file():
        return file_sha256(p)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{file_sha256(f)}\n".encode())
        return "tree:" + h.hexdigest()
    return None
