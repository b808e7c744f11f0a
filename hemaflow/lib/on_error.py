"""``on_error: skip | stop`` for a bad item (an image, a cell's file): the one implementation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hemaflow.core.errors import DataError


def skip_or_stop(ctx: Any, on_error: str, file: str | Path, reason: str, *, item: str | None = None,
                 error: DataError | None = None) -> None:
    """``stop``: raise ``error`` (the one caught) or a :class:`DataError` naming ``file``; ``skip``: warn
    ``skipped <item>: <reason>`` (``item`` defaults to the file) and return: the caller leaves the item out."""
    if on_error == "stop":
        raise error if error is not None else DataError(file, reason)
    ctx.warn(f"skipped {item if item is not None else file}: {reason}")
