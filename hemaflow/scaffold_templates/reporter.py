"""A hemaflow reporter: a minimal self-contained HTML page with the run's metrics."""

from __future__ import annotations

import html
from pathlib import Path

from hemaflow import Reporter, hookimpl


class TemplateComponent(Reporter):
    """One page: the recipe's name, each metrics section as a table, the steps and their time.

    Writes ``run_dir/report.html`` (no network resources). The ``run`` dict is described in
    :class:`hemaflow.Reporter`.
    """

    name = "template_component"
    version = "1"
    schema = {
        "type": "object",
        "properties": {"title": {"type": ["string", "null"], "default": None}},
        "additionalProperties": False,
    }

    def write(self, run_dir, run):
        esc = html.escape
        title = self.params["title"] or f"hemaflow run: {run.get('name') or 'run'}"
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title></head><body>",
                 f"<h1>{esc(title)}</h1>"]
        for section, vals in (run.get("metrics") or {}).items():
            if isinstance(vals, dict):
                cells = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(str(v))}</td></tr>" for k, v in vals.items())
                parts.append(f"<h2>{esc(str(section))}</h2><table>{cells}</table>")
        steps = "".join(f"<li>{esc(str(s.get('id')))}: {float(s.get('seconds') or 0):.1f} s</li>"
                        for s in run.get("steps") or [])
        parts.append(f"<h2>steps</h2><ul>{steps}</ul></body></html>")
        path = Path(run_dir) / "report.html"
        path.write_text("".join(parts), encoding="utf-8")
        return path


@hookimpl
def register_reporters(register):
    register(TemplateComponent)
