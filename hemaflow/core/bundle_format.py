"""The bundle format: ``bundle.json`` and its checks (format, hemaflow version, every file's
SHA-256), :class:`Bundle`, loading a folder or a zip, and :func:`seal`. Export is
:mod:`hemaflow.core.bundle_export`, apply and the command line :mod:`hemaflow.core.bundle`
(docs/bundles.md)."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hemaflow.core.errors import DataError

FORMAT = "hemaflow-bundle"
FORMAT_VERSION = 1
BUNDLE_REF = "@bundle"
#: components the inference path runs unchanged: they fit nothing
STATELESS_KINDS = ("segmenter", "postprocessor", "cells", "features")
STAIN = ("macenko", "reinhard")


class BundleVersionWarning(UserWarning):
    """A bundle of another hemaflow major.minor, loaded with ``version_policy="warn"``."""


@dataclass
class Bundle:
    """A loaded, checked bundle: its folder and ``bundle.json``."""

    root: Path
    info: dict[str, Any]

    def part(self, step: str) -> dict[str, Any]:
        parts = self.info.get("parts", {})
        if step not in parts:
            raise DataError(self.root / "bundle.json", f"has no part {step!r}; its parts are {sorted(parts)}")
        return parts[step]

    @property
    def recipe(self) -> dict[str, Any]:
        return json.loads((self.root / "recipe.json").read_text())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


# -- loading and checks ---------------------------------------------------------------------------
def load_bundle(path: Path, *, version_policy: str = "error") -> Bundle:
    """Open a bundle folder and check it: format, hemaflow version (major.minor must match;
    ``version_policy="warn"`` only warns), and every listed file present with its SHA-256.

    Raises:
        DataError: not a bundle, another hemaflow version, a missing or changed part (named).
    """
    import warnings

    from hemaflow import __version__

    path = Path(path)
    meta = path / "bundle.json"
    if not path.is_dir() or not meta.is_file():
        raise DataError(path, "not a hemaflow bundle (no bundle.json; write one with "
                              "`hemaflow export RUN_DIR --out DIR`)")
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(meta, f"unreadable bundle description ({exc})") from None
    if info.get("format") != FORMAT:
        raise DataError(meta, f"not a hemaflow bundle (format {info.get('format')!r})")
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise DataError(meta, f"bundle format {info.get('format_version')} is newer than this hemaflow reads "
                              f"({FORMAT_VERSION}); upgrade hemaflow")
    made = str(info.get("hemaflow", "?"))
    if _minor(made) != _minor(__version__):
        msg = (f"the bundle was written by hemaflow {made}, this is hemaflow {__version__}: versions that differ "
               f"in major.minor may compute other features; use hemaflow {'.'.join(_minor(made))}.x or export the "
               f"run again")
        if version_policy == "error":
            raise DataError(meta, msg + " (or accept it: --version-policy warn)")
        info["version_warning"] = msg
        warnings.warn(msg, BundleVersionWarning, stacklevel=2)
    for rel, digest in sorted(info.get("files", {}).items()):
        f = path / rel
        if not f.is_file():
            raise DataError(path, f"missing part {rel} (listed in bundle.json); the bundle is incomplete")
        if _sha256(f) != digest:
            raise DataError(f, "changed since export (SHA-256 differs from bundle.json)")
    return Bundle(path, info)


def open_bundle(path: Path, workdir: Path, *, version_policy: str = "error") -> Bundle:
    """:func:`load_bundle` for a folder, or a ``.zip`` unpacked into ``workdir`` first."""
    path = Path(path).expanduser()
    if path.is_file() and zipfile.is_zipfile(path):
        dest = workdir / (path.stem + ".hfb")
        if dest.exists():
            shutil.rmtree(dest)
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.startswith("/") or ".." in Path(name).parts:
                    raise DataError(path, f"unsafe path in the zip: {name}")
            z.extractall(dest)
        return load_bundle(dest, version_policy=version_policy)
    if not path.exists():
        raise DataError(path, "bundle not found")
    return load_bundle(path, version_policy=version_policy)


def seal(folder: Path, info: dict[str, Any]) -> None:
    """Write ``bundle.json``: ``info`` plus the SHA-256 of every other file of ``folder``."""
    info["files"] = {f.relative_to(folder).as_posix(): _sha256(f) for f in sorted(folder.rglob("*"))
                     if f.is_file() and f.name != "bundle.json"}
    (folder / "bundle.json").write_text(json.dumps(info, indent=1, default=str))
