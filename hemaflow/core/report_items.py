"""Report items: what a step wants shown in ``report.html``.

Steps add items through ``ctx.report``; they are stored in the step's cache entry (so a cached
step still shows its figures) and the reporter renders them in step order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ReportItems:
    """Append-only list of report items stored as ``items.json`` plus payload files."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._items: list[dict[str, Any]] = []
        if (self.path / "items.json").exists():
            self._items = json.loads((self.path / "items.json").read_text())

    @property
    def items(self) -> list[dict[str, Any]]:
        return list(self._items)

    def _add(self, item: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self._items.append(item)
        (self.path / "items.json").write_text(json.dumps(self._items, indent=1, default=str))

    def _file(self, data: bytes, suffix: str) -> str:
        self.path.mkdir(parents=True, exist_ok=True)
        name = f"item{len(self._items):03d}{suffix}"
        (self.path / name).write_bytes(data)
        return name

    def text(self, title: str, text: str, *, section: str = "") -> None:
        """Add a paragraph of plain text."""
        self._add({"type": "text", "title": title, "section": section, "text": text})

    def html(self, title: str, html: str, *, section: str = "") -> None:
        """Add a trusted HTML snippet (no scripts, no external resources)."""
        self._add({"type": "html", "title": title, "section": section, "html": html})

    def table(self, title: str, rows: list[dict[str, Any]], *, section: str = "") -> None:
        """Add a table given as a list of row dicts."""
        self._add({"type": "table", "title": title, "section": section, "rows": rows})

    def image(self, title: str, png: bytes, *, caption: str = "", section: str = "") -> None:
        """Add a PNG image (bytes)."""
        self._add({"type": "image", "title": title, "section": section, "caption": caption,
                   "file": self._file(png, ".png")})

    def svg(self, title: str, svg: str, *, caption: str = "", section: str = "") -> None:
        """Add an SVG figure (text)."""
        self._add({"type": "svg", "title": title, "section": section, "caption": caption,
                   "file": self._file(svg.encode(), ".svg")})

    def figure(self, title: str, fig: Any, *, caption: str = "", section: str = "") -> None:
        """Add a matplotlib figure (stored as SVG) and close it."""
        import io

        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
        try:
            import matplotlib.pyplot as plt

            plt.close(fig)
        except Exception:  # pragma: no cover
            pass
        self.svg(title, buf.getvalue(), caption=caption, section=section)

    def gallery(self, title: str, images: list[tuple[str, bytes]], *, section: str = "") -> None:
        """Add a gallery: a list of (caption, PNG bytes)."""
        files = [{"caption": c, "file": self._file(b, f"_{i}.png")} for i, (c, b) in enumerate(images)]
        self._add({"type": "gallery", "title": title, "section": section, "images": files})
