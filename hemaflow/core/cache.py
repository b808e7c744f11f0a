"""Content-addressed step cache with atomic, self-checking entries.

Layout under the root::

    steps/<key[:2]>/<key>/   a finished step: its output artifacts, report items (``_report/``),
                             ``outputs.json`` and ``step.json``
    tmp/<key>-<pid>-<host>-<random>/   a step being computed (renamed into ``steps/`` when done)
    locks/<key>.lock         one lock per key: a run computing a step holds it
    hashes.json              digests of big input files (:mod:`hemaflow.core.filehash`)

An entry is written in ``tmp/`` and renamed into place only after the step finished, so a killed
run never leaves half an entry. ``step.json`` holds a content manifest of the entry (every file's
relative path, size and SHA-256) and the SHA-256 of its own content. :meth:`StepCache.lookup` checks
an entry cheaply before it is used: ``step.json`` parses and matches its hash, exactly the
listed files exist (no links, nothing extra), sizes match, and a file whose stat stamp (size,
``mtime``, inode, ``ctime``) moved since the commit (``.stamps.json``) is hashed again.
``check(key, full=True)`` hashes everything
(``hemaflow cache verify``). A damaged entry raises :class:`EntryDamaged`; the runner discards it
and computes the step again. Paths in ``outputs.json`` are confined to the entry.

Concurrent runs sharing the root take the key's lock (:meth:`StepCache.lock`) before computing a
step, so the second waits for the first and then uses its entry. The lock is an OS file lock
(``filelock``): the kernel drops it when its holder dies, so a lock of a killed run is never stale.

The root is ``$HEMAFLOW_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/hemaflow`` (default
``~/.cache/hemaflow``).

The entry's content manifest is built in :mod:`hemaflow.core.cache_manifest`, the locks and the
housekeeping (orphans, listing entries) are in :mod:`hemaflow.core.cache_upkeep`; their names are
re-exported here (the earlier import path).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from hemaflow.core import atomic
from hemaflow.core.cache_manifest import (  # noqa: F401  (re-exported: the earlier import path)
    MANIFEST_VERSION, STAMPS, STEP_JSON, _stamp, _walk_files, build_manifest, safe_relpath)
from hemaflow.core.cache_upkeep import (  # noqa: F401  (re-exported: the earlier import path)
    ORPHAN_AGE_S, _TMP, CacheUpkeep, EntryInfo, _host_tag, pid_alive)
from hemaflow.core.filehash import sha256_stream

_KEY = re.compile(r"^[0-9a-f]{64}$")


def default_cache_dir() -> Path:
    env = os.environ.get("HEMAFLOW_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "hemaflow"


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def cache_key(payload: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``payload`` (component, version, params, inputs, ...)."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


class EntryDamaged(Exception):
    """A cache entry failed its integrity check; the message says which file and how."""


def info_hash(info: dict[str, Any]) -> str:
    """SHA-256 of ``step.json``'s content without its own ``sha256`` field (canonical JSON)."""
    return hashlib.sha256(canonical_json({k: v for k, v in info.items() if k != "sha256"}).encode()).hexdigest()


class StepCache(CacheUpkeep):
    """The cache directory (see the module docstring); locks and housekeeping come from
    :class:`~hemaflow.core.cache_upkeep.CacheUpkeep`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # -- entries -------------------------------------------------------------------------------
    def entry(self, key: str) -> Path:
        return self.root / "steps" / key[:2] / key

    def lookup(self, key: str) -> Path | None:
        """Return the finished, checked entry for ``key``, or None when there is none.

        Raises:
            EntryDamaged: the entry exists but failed the cheap check (see the module docstring).
        """
        found = self.lookup_info(key)
        return None if found is None else found[0]

    def lookup_info(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """Like :meth:`lookup`, returning the entry and its ``step.json``."""
        path = self.entry(key)
        if not os.path.lexists(path):
            return None
        if path.is_symlink() or not path.is_dir():
            raise EntryDamaged("the entry is not a folder")
        info = self.check(key, full=False)
        with contextlib.suppress(OSError):
            os.utime(path)  # last use, for `hemaflow cache prune`
        return path, info

    def read_info(self, key: str) -> dict[str, Any]:
        """``step.json`` of the entry ``key``, checked for shape.

        Raises:
            EntryDamaged: missing, not JSON, of another key, or without a valid manifest.
        """
        path = self.entry(key) / STEP_JSON
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EntryDamaged("step.json is missing") from None
        except (OSError, ValueError) as exc:
            raise EntryDamaged(f"step.json is not readable JSON ({type(exc).__name__})") from None
        if not isinstance(info, dict):
            raise EntryDamaged("step.json is not a JSON object")
        if info.get("key") != key:
            raise EntryDamaged("step.json names another cache key")
        rows = info.get("manifest")
        if rows is None:
            raise EntryDamaged("no content manifest (written by an older hemaflow)")
        if not isinstance(rows, list) or info_hash(info) != info.get("sha256"):
            raise EntryDamaged("step.json was edited (its content does not match its sha256)")
        for row in rows:
            ok = (isinstance(row, list) and len(row) == 3 and safe_relpath(row[0]) == row[0]
                  and row[0] not in (STEP_JSON, STAMPS) and isinstance(row[1], int) and not isinstance(row[1], bool)
                  and isinstance(row[2], str) and len(row[2]) == 64)
            if not ok:
                raise EntryDamaged(f"step.json's content manifest has a bad row {str(row)[:80]}")
        return info

    def check(self, key: str, *, full: bool = False) -> dict[str, Any]:
        """Check the entry ``key`` and return its ``step.json``.

        The cheap check (``full=False``) reads ``step.json`` and stats every file: the listed
        files, and only they, exist with the recorded sizes; a file whose stamp (size, mtime,
        inode, ctime) differs from the one recorded at commit is hashed. ``full=True`` hashes every file.

        Raises:
            EntryDamaged: naming the first problem found.
        """
        path = self.entry(key)
        info = self.read_info(key)
        try:
            files, odd = _walk_files(path)
        except OSError as exc:
            raise EntryDamaged(f"cannot list the entry ({exc.strerror or exc})") from None
        if odd:
            raise EntryDamaged(f"{odd[0]} is not a regular file (a link or device)")
        rows = info["manifest"]
        listed = {r[0] for r in rows}
        missing = sorted(listed - set(files))
        if missing:
            raise EntryDamaged(f"{missing[0]} is missing")
        # (a concurrent lookup may be replacing .stamps.json right now: its temporary file is no damage)
        extra = sorted(f for f in set(files) - listed - {STEP_JSON, STAMPS}
                       if not f.startswith(f".{STAMPS}{atomic.TMP_MARK}"))
        if extra:
            raise EntryDamaged(f"{extra[0]} is not part of the entry's manifest")
        stamps: dict[str, Any] = {}
        if not full:
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads((path / STAMPS).read_text())
                stamps = loaded if isinstance(loaded, dict) else {}
        refreshed = False
        for rel, size, sha in rows:
            st = files[rel]
            if st.st_size != size:
                raise EntryDamaged(f"{rel} has {st.st_size} bytes, expected {size} (truncated or edited)")
            if full or stamps.get(rel) != _stamp(st):
                try:
                    digest = sha256_stream(path / rel)
                except OSError as exc:
                    raise EntryDamaged(f"{rel} cannot be read ({exc.strerror or exc})") from None
                if digest != sha:
                    raise EntryDamaged(f"{rel}: content changed since the step ran (sha256 differs)")
                stamps[rel] = _stamp(st)
                refreshed = True
        self.outputs(key)
        if refreshed:  # checked by content now: the next lookup needs only stat again
            with contextlib.suppress(OSError):
                atomic.write_text(path / STAMPS, json.dumps(stamps), fsync=False)
        return info

    def outputs(self, key: str) -> dict[str, tuple[str, Path]]:
        """The entry's outputs as ``name -> (artifact type name, folder)``, each folder inside
        the entry (or, for an input passed through unchanged, inside the upstream entry).

        Raises:
            EntryDamaged: ``outputs.json`` is not JSON, or a path leaves its entry.
        """
        path = self.entry(key)
        try:
            desc = json.loads((path / "outputs.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EntryDamaged("outputs.json is missing") from None
        except (OSError, ValueError) as exc:
            raise EntryDamaged(f"outputs.json is not readable JSON ({type(exc).__name__})") from None
        if not isinstance(desc, dict):
            raise EntryDamaged("outputs.json is not a JSON object")
        out = {}
        for name, d in desc.items():
            if not isinstance(d, dict) or not isinstance(d.get("type"), str):
                raise EntryDamaged(f"outputs.json: output {name!r} has no type")
            rel = safe_relpath(d.get("path"), dot=True)
            if rel is None:
                raise EntryDamaged(f"outputs.json: output {name!r} has path {str(d.get('path'))[:80]!r}, "
                                   "which leaves the entry")
            base = path
            if "entry" in d:  # an input passed through unchanged lives in its own entry
                other = d["entry"]
                if not isinstance(other, str) or not _KEY.match(other) or other == key:
                    raise EntryDamaged(f"outputs.json: output {name!r} names a bad entry {str(other)[:80]!r}")
                try:
                    self.check(other)
                except EntryDamaged as exc:
                    raise EntryDamaged(f"output {name!r} is passed through from entry {other[:12]}, which is "
                                       f"damaged: {exc}") from None
                base = self.entry(other)
            out[name] = (d["type"], base / rel)
        return out

    def output_ref(self, workdir: Path, art_path: Path) -> dict[str, str]:
        """How ``outputs.json`` refers to an artifact folder: relative to the step's work
        directory, or to the finished entry of an input passed through unchanged.

        Raises:
            ValueError: the folder is in neither (outputs must live in the cache).
        """
        art = art_path.resolve()
        try:
            return {"path": art.relative_to(workdir.resolve()).as_posix()}
        except ValueError:
            pass
        steps = (self.root / "steps").resolve()
        try:
            rel = art.relative_to(steps)
        except ValueError:
            raise ValueError(f"output folder {art_path} is outside the step's work directory") from None
        if len(rel.parts) < 3 or not _KEY.match(rel.parts[1]):
            raise ValueError(f"output folder {art_path} is not inside a cache entry")
        return {"entry": rel.parts[1], "path": PurePosixPath(*rel.parts[2:]).as_posix()}

    def remove(self, key: str) -> bool:
        """Remove the entry ``key`` (moved out of ``steps/`` first, so no reader sees half of it)."""
        path = self.entry(key)
        if not path.exists():
            return False
        trash = self.root / "tmp" / f"{key}-{os.getpid()}-{_host_tag()}-trash-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(path, trash)
        except OSError:
            shutil.rmtree(path, ignore_errors=True)
            return not path.exists()
        shutil.rmtree(trash, ignore_errors=True)
        return True

    # -- writing -------------------------------------------------------------------------------
    def new_workdir(self, key: str) -> Path:
        path = self.root / "tmp" / f"{key}-{os.getpid()}-{_host_tag()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def commit(self, key: str, workdir: Path, info: dict[str, Any]) -> Path:
        """Atomically move a finished ``workdir`` into place as the entry for ``key``, with its
        content manifest in ``step.json``."""
        shutil.rmtree(workdir / "_scratch", ignore_errors=True)
        rows, stamps = build_manifest(workdir)
        info = json.loads(json.dumps(dict(info, key=key, manifest_version=MANIFEST_VERSION, manifest=rows),
                                     default=str))  # as read back: the hash is over what lookup will see
        info["sha256"] = info_hash(info)
        # plain writes: nobody sees the work directory before the rename below
        (workdir / STAMPS).write_text(json.dumps(stamps))
        (workdir / STEP_JSON).write_text(json.dumps(info, indent=1, default=str))
        final = self.entry(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(workdir, final)
        except OSError:
            # another run finished the same step first (it waited past the lock timeout): keep
            # theirs if it is sound, else replace it (OSError if even that fails)
            try:
                self.check(key)
            except EntryDamaged:
                self.remove(key)
                os.rename(workdir, final)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        return final

    def discard(self, workdir: Path) -> None:
        shutil.rmtree(workdir, ignore_errors=True)
