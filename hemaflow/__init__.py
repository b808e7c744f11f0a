"""hemaflow: a plugin-based workflow engine for leukemia classification from blood smears."""

from __future__ import annotations

__version__ = "0.1.0"

from hemaflow.core.markers import hookimpl, hookspec  # noqa: E402

__all__ = ["__version__", "hookimpl", "hookspec"]
