"""Content-addressed step cache with atomic entries.

Layout: ``<root>/steps/<key[:2]>/<key>/`` holding the step's output artifacts, its report
items (``_report/``) and ``step.json``. An entry is written in ``<root>/tmp/`` and renamed into
place only after the step finished, so a killed run never leaves a corrupt entry; the next run
simply recomputes what is missing.

The root is ``$HEMAFLOW_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/hemaflow`` (default
``~/.cache/hemaflow``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any


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


class StepCache:
    """The cache directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        return self.root / "steps" / key[:2] / key

    def lookup(self, key: str) -> Path | None:
        """Return the finished entry for ``key`` or None."""
        path = self.entry(key)
        return path if (path / "step.json").exists() else None

    def new_workdir(self, key: str) -> Path:
        path = self.root / "tmp" / f"{key[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def commit(self, key: str, workdir: Path, info: dict[str, Any]) -> Path:
        """Atomically move a finished ``workdir`` into place as the entry for ``key``."""
        tmp = workdir / "step.json.tmp"
        tmp.write_text(json.dumps(info, indent=1, default=str))
        os.replace(tmp, workdir / "step.json")
        shutil.rmtree(workdir / "_scratch", ignore_errors=True)
        final = self.entry(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(workdir, final)
        except OSError:
            # another run finished the same step first: keep theirs
            shutil.rmtree(workdir, ignore_errors=True)
        return final

    def discard(self, workdir: Path) -> None:
        shutil.rmtree(workdir, ignore_errors=True)
