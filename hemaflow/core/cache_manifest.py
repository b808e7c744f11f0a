"""The content manifest of a step-cache entry (:mod:`hemaflow.core.cache`): the names of its
bookkeeping files, walking an entry's files without following links, the stat stamps that let a
lookup skip hashing an unchanged file, the manifest ``[[relative path, size, sha256], ...]``
written into ``step.json``, and the check that a recorded path stays inside its entry."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hemaflow.core.filehash import sha256_stream

MANIFEST_VERSION = 1
STEP_JSON = "step.json"
STAMPS = ".stamps.json"


def safe_relpath(text: Any, *, dot: bool = False) -> str | None:
    """``text`` if it is a normalized relative POSIX path that stays inside its folder (no
    absolute path, no ``..``, ``.`` or empty parts; ``"."`` itself only with ``dot``), else None.
    Plain string checks: this runs for every file of every entry on each lookup."""
    if not isinstance(text, str) or not text or text[0] == "/" or "\0" in text:
        return None
    if dot and text == ".":
        return text
    return None if any(part in ("", ".", "..") for part in text.split("/")) else text


def _walk_files(root: Path) -> tuple[dict[str, os.stat_result], list[str]]:
    """Regular files below ``root`` by relative path, and the paths of anything else (links...)."""
    files: dict[str, os.stat_result] = {}
    odd: list[str] = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        with os.scandir(folder) as it:
            for e in it:
                rel = prefix + e.name
                if e.is_symlink():
                    odd.append(rel)
                elif e.is_dir(follow_symlinks=False):
                    stack.append((Path(e.path), rel + "/"))
                elif e.is_file(follow_symlinks=False):
                    files[rel] = e.stat(follow_symlinks=False)
                else:
                    odd.append(rel)
    return files, odd


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def build_manifest(workdir: Path) -> tuple[list[list[Any]], dict[str, list[int]]]:
    """The content manifest ``[[relative path, size, sha256], ...]`` of a work directory (sorted),
    and the stat stamps of its files."""
    files, odd = _walk_files(workdir)
    if odd:
        raise ValueError(f"the step's outputs hold {odd[0]!r}, which is not a regular file (links are not allowed)")
    rows, stamps = [], {}
    for rel in sorted(files):
        if rel in (STEP_JSON, STAMPS):
            continue
        st = files[rel]
        rows.append([rel, st.st_size, sha256_stream(workdir / rel)])
        stamps[rel] = _stamp(st)
    return rows, stamps
