"""The names of timm's models without importing timm (which brings torch and torchvision:
seconds), so ``hemaflow validate`` and a fully cached run stay light.

The list is written once per installed timm version to ``<cache>/meta/timm-<version>-models.txt``
(the cache directory of :func:`hemaflow.core.cache.default_cache_dir`) and read from there
afterwards. A name missing from the list is still checked against timm itself by the caller,
so the list only speeds up the common case and never decides alone that a name is unknown.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

_MEMO: dict[str, frozenset[str]] = {}


def _list_path(version: str) -> Path:
    from hemaflow.core.cache import default_cache_dir

    return default_cache_dir() / "meta" / f"timm-{version}-models.txt"


def known_timm_models() -> frozenset[str]:
    """Architecture names timm registers (``timm.list_models()``), from the per-version list
    when there is one; else from timm, writing the list for next time (best effort)."""
    try:
        version = metadata.version("timm")
    except metadata.PackageNotFoundError:
        return frozenset()
    if version in _MEMO:
        return _MEMO[version]
    path = _list_path(version)
    names: frozenset[str] | None = None
    if "timm" not in sys.modules:  # once timm is imported, asking it costs nothing
        try:
            names = frozenset(path.read_text().split())
        except OSError:
            names = None
    if not names:
        import timm

        names = frozenset(timm.list_models())
        try:
            from hemaflow.core import atomic

            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(path, "\n".join(sorted(names)) + "\n", fsync=False)
        except OSError:  # a read-only cache: the list is only a speed-up
            pass
    _MEMO[version] = names
    return names
