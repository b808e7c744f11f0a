"""Atomic file writes: a file is either its old content or its complete new content.

Each write goes to a hidden temporary file beside the target (``.<name>.tmp-<pid>-<random>``),
is flushed to disk, then renamed over the target with :func:`os.replace` (atomic on POSIX and
Windows within one file system). A write that raises (disk full, a bug in the renderer, an
interrupt) removes the temporary file and leaves the target untouched: never a truncated
``report.html`` or half a ``provenance.json``.

Example::

    write_text(run_dir / "metrics.json", json.dumps(metrics))
    with replacing(run_dir / "predictions.csv") as tmp:
        table.to_csv(tmp, index=False)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

TMP_MARK = ".tmp-"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of this module's temporary files (left behind by a killed write)."""
    return name.startswith(".") and TMP_MARK in name


@contextlib.contextmanager
def replacing(path: Path | str, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error, the
    file written there replaces ``path`` atomically, else it is removed.

    ``fsync=False`` skips flushing to disk (a few ms per file) where something else already
    makes the whole directory appear at once, e.g. a cache entry's work directory.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    # created like open() would (permissions from the umask), but never over an existing file
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_text(path: Path | str, text: str, encoding: str = "utf-8", *, fsync: bool = True) -> Path:
    """Write ``text`` to ``path`` atomically; return the path."""
    with replacing(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes(path: Path | str, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; return the path."""
    with replacing(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)
