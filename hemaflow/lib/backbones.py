"""timm model names checked without importing timm (which brings torch and torchvision:
seconds), so ``hemaflow validate`` and a fully cached run stay light.

The list is written once per installed timm version to ``<cache>/meta/timm-<version>-models.txt``
(the cache directory of :func:`hemaflow.core.cache.default_cache_dir`) and read from there
afterwards. A name missing from the list is still checked against timm itself by the caller,
so the list only speeds up the common case and never decides alone that a name is unknown.
"""

from __future__ import annotations

import difflib
import sys
from importlib import metadata
from pathlib import Path

from hemaflow.core.errors import HemaflowError

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


def check_model_name(name: str) -> None:
    """Raise a clear error (with close-name suggestions) if timm does not know ``name``.

    A name in :func:`known_timm_models` passes without importing timm; any other is asked of timm.
    """
    if name in known_timm_models():
        return
    import timm

    if timm.is_model(name):
        return
    known = timm.list_models()
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
    if not close:
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise HemaflowError(f"unknown timm model {name!r}{hint} (`python -c \"import timm; print(timm.list_models('*{name[:4]}*'))\"` lists names)")


def pretrained_error(name: str) -> HemaflowError:
    """The error for a request to download pretrained weights of timm model ``name``."""
    return HemaflowError(
        f"pretrained weights for {name!r} cannot be downloaded: hemaflow runs offline. Save them once on a "
        f"machine with network access, e.g. `python -c \"import timm, safetensors.torch as st; "
        f"m = timm.create_model('{name}', pretrained=True); st.save_file(m.state_dict(), '{name}.safetensors')\"`, "
        f"then set `pretrained: /path/to/{name}.safetensors` (a local .safetensors, .pth or .bin file)")
