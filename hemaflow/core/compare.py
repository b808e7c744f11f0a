"""``hemaflow compare``: put finished runs side by side.

Reads run directories (``recipe.resolved.yaml``, ``metrics.json``, ``provenance.json``), lists
the recipe keys that differ between them (nothing else), and their metrics with the difference
to the first run and the confidence intervals when a run has them. Rendered as rich tables for
the terminal and as a self-contained HTML page. Knows nothing about the metrics' meaning: any
numeric value in a ``metrics.json`` section is compared.

Example::

    runs = load_runs([Path("runs/a"), Path("runs/b")])
    print_comparison(Console(), runs)
    Path("compare.html").write_text(render_comparison_html(runs))
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from hemaflow.core.diff import MISSING, diff
from hemaflow.core.errors import DataError, UsageError

SECTION_ORDER = ("patient", "image", "cell", "segmentation")


@dataclass
class RunInfo:
    """One finished run as read from its directory."""

    path: Path
    label: str
    recipe: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class MetricRow:
    """One metric across runs: ``values``/``cis`` per run (None where absent)."""

    section: str
    metric: str
    values: list[float | None]
    cis: list[list[float] | None]
    spread: list[float | None] = field(default_factory=list)  # fold standard deviation, for folds rows

    def deltas(self) -> list[float | None]:
        base = self.values[0]
        return [None if base is None or v is None else v - base for v in self.values]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON at line {exc.lineno}: {exc.msg}") from None


def load_runs(paths: Iterable[Path | str]) -> list[RunInfo]:
    """Read run directories.

    Raises:
        UsageError: a path is not a directory or not a run directory (no recipe.resolved.yaml).
        DataError: a run's recipe or metrics file cannot be parsed (names the file).
    """
    import yaml

    runs = []
    for p in map(Path, paths):
        # a wrong path on the command line is a usage error (exit 2), a broken run a data error
        if not p.is_dir():
            raise UsageError(f"{p}: no such run directory")
        rfile = p / "recipe.resolved.yaml"
        if not rfile.exists():
            raise UsageError(f"{p}: not a hemaflow run directory (no recipe.resolved.yaml)")
        try:
            recipe = yaml.safe_load(rfile.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DataError(rfile, f"invalid YAML: {exc}") from None
        metrics = _read_json(p / "metrics.json") if (p / "metrics.json").exists() else {}
        prov = _read_json(p / "provenance.json") if (p / "provenance.json").exists() else {}
        runs.append(RunInfo(p, p.name, recipe, metrics, prov))
    if not runs:
        raise UsageError("compare needs at least one run directory")
    # runs with the same directory name (e.g. runs/a/x and runs/b/x) get their parent in the label
    names = [r.label for r in runs]
    for r in runs:
        if names.count(r.label) > 1:
            r.label = f"{r.path.parent.name}/{r.path.name}"
    return runs


def recipe_changes(runs: list[RunInfo]) -> list[tuple[str, list[Any]]]:
    """Dotted recipe keys whose values are not the same in every run, with each run's value.

    Absent keys are :data:`hemaflow.core.diff.MISSING`.
    """
    from hemaflow.core.diff import flatten

    keys: list[str] = []
    for r in runs[1:]:
        for ch in diff(runs[0].recipe, r.recipe):
            if ch.key not in keys:
                keys.append(ch.key)
    flat = [flatten(r.recipe) for r in runs]
    return [(k, [f.get(k, MISSING) for f in flat]) for k in keys]


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def metric_rows(runs: list[RunInfo]) -> list[MetricRow]:
    """Every numeric metric of any run, sections in a fixed order, with CIs and fold summaries."""
    sections: list[str] = [s for s in SECTION_ORDER if any(isinstance(r.metrics.get(s), dict) for r in runs)]
    for r in runs:
        for s, v in r.metrics.items():
            if isinstance(v, dict) and s not in sections:
                sections.append(s)
    rows: list[MetricRow] = []
    for s in sections:
        keys: list[str] = []
        for r in runs:
            for k, v in (r.metrics.get(s) or {}).items():
                if _is_num(v) and not k.endswith("_ci") and k not in keys:
                    keys.append(k)
        for k in keys:
            vals, cis = [], []
            for r in runs:
                sec = r.metrics.get(s) or {}
                vals.append(sec.get(k) if _is_num(sec.get(k)) else None)
                ci = sec.get(f"{k}_ci")
                cis.append(ci if isinstance(ci, list) and len(ci) == 2 and all(map(_is_num, ci)) else None)
            rows.append(MetricRow(s, k, vals, cis))
    rows.extend(_fold_rows(runs))
    return rows


def _fold_rows(runs: list[RunInfo]) -> list[MetricRow]:
    """Mean and standard deviation over folds of each numeric per-fold metric."""
    import statistics

    per_run: list[dict[str, list[float]]] = []
    keys: list[str] = []
    for r in runs:
        acc: dict[str, list[float]] = {}
        for f in r.metrics.get("folds") or []:
            if not isinstance(f, dict):
                continue
            for lv, vals in f.items():
                if isinstance(vals, dict):
                    for k, v in vals.items():
                        if _is_num(v) and k != "n":
                            name = f"{lv}.{k}"
                            acc.setdefault(name, []).append(float(v))
                            if name not in keys:
                                keys.append(name)
        per_run.append(acc)
    rows = []
    for k in keys:
        vals = [statistics.fmean(a[k]) if a.get(k) else None for a in per_run]
        sds = [statistics.stdev(a[k]) if len(a.get(k) or []) > 1 else None for a in per_run]
        rows.append(MetricRow("folds (mean ± sd)", k, vals, [None] * len(runs), sds))
    return rows


# -- formatting ----------------------------------------------------------------------------------
def fmt_value(v: Any) -> str:
    if v is MISSING:
        return "(absent)"
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    if v is None:
        return "null"
    return str(v)


def _fmt_metric(v: float | None, metric: str) -> str:
    if v is None:
        return "–"
    if isinstance(v, int):  # counts stay counts
        return str(v)
    return f"{v:.4f}"


def _fmt_delta(d: float | None, metric: str) -> str:
    if d is None:
        return ""
    if isinstance(d, int):
        return f"{d:+d}"
    return f"{d:+.4f}"


def _fmt_ci(ci: list[float] | None) -> str:
    return f"[{ci[0]:.4f}, {ci[1]:.4f}]" if ci else ""


def _status(r: RunInfo) -> str:
    return str(r.provenance.get("status", "?"))


def _run_rows(runs: list[RunInfo]) -> list[dict[str, str]]:
    out = []
    for r in runs:
        secs = r.provenance.get("seconds")
        out.append({"run": r.label, "recipe": str(r.recipe.get("name", "")), "status": _status(r),
                    "started": str(r.provenance.get("started", "")),
                    "seconds": f"{secs:.1f}" if _is_num(secs) else "", "path": str(r.path)})
    return out


# -- terminal --------------------------------------------------------------------------------------
def print_comparison(console: Any, runs: list[RunInfo]) -> None:
    """Print the runs, the differing recipe keys and the metrics as rich tables."""
    from rich.table import Table

    t = Table(title="Runs", title_justify="left")
    for c in ("run", "recipe", "status", "seconds", "path"):
        t.add_column(c, justify="right" if c == "seconds" else "left")
    for row in _run_rows(runs):
        t.add_row(*(row[c] for c in ("run", "recipe", "status", "seconds", "path")))
    console.print(t)

    changes = recipe_changes(runs)
    if len(runs) > 1 and not changes:
        console.print("Recipe differences: none (the resolved recipes are identical)")
    elif changes:
        t = Table(title="Recipe differences", title_justify="left")
        t.add_column("key", style="bold")
        for r in runs:
            t.add_column(r.label)
        for key, vals in changes:
            t.add_row(key, *(fmt_value(v) for v in vals))
        console.print(t)

    rows = metric_rows(runs)
    if not rows:
        console.print("Metrics: none of these runs has metrics")
        return
    t = Table(title="Metrics" + (f" (Δ vs {runs[0].label})" if len(runs) > 1 else ""), title_justify="left")
    t.add_column("section")
    t.add_column("metric", style="bold")
    for r in runs:
        t.add_column(r.label, justify="right")
    last = None
    for row in rows:
        cells = []
        for i, (v, ci, d) in enumerate(zip(row.values, row.cis, row.deltas())):
            text = _fmt_metric(v, row.metric)
            if row.spread and row.spread[i] is not None:
                text += f" ± {row.spread[i]:.4f}"
            if ci:
                text += f" [dim]{_fmt_ci(ci)}[/dim]"
            if i > 0 and d is not None:
                colour = "" if row.metric == "n" or d == 0 else ("green" if d > 0 else "red")
                delta = _fmt_delta(d, row.metric)
                text += f" ([{colour}]{delta}[/{colour}])" if colour else f" ({delta})"
            cells.append(text)
        t.add_row(row.section if row.section != last else "", row.metric, *cells)
        last = row.section
    console.print(t)


# -- HTML ------------------------------------------------------------------------------------------
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330; margin: 0; }
header { background: #7a2e8e; color: #fff; padding: 18px 28px; } header h1 { margin: 0; font-size: 22px; }
main { padding: 8px 28px 40px; }
h2 { border-bottom: 2px solid #d9dde5; padding-bottom: 4px; margin-top: 28px; }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid #d9dde5; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f6f9; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ci, .muted { color: #5c6577; font-size: 12px; } .up { color: #1f7a35; } .down { color: #b3261e; }
code { font-size: 12px; }
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def render_comparison_html(runs: list[RunInfo]) -> str:
    """Return a self-contained HTML page (no scripts, no external resources) comparing ``runs``."""
    parts = ['<header><h1>hemaflow compare</h1></header><main>']
    # runs
    rows = _run_rows(runs)
    cols = ["run", "recipe", "status", "started", "seconds", "path"]
    parts.append('<section id="runs"><h2>Runs</h2><table><thead><tr>' + "".join(f"<th>{c}</th>" for c in cols)
                 + "</tr></thead><tbody>")
    for row in rows:
        parts.append("<tr>" + "".join(f"<td>{_e(row[c])}</td>" for c in cols) + "</tr>")
    parts.append("</tbody></table></section>")
    # recipe differences
    changes = recipe_changes(runs)
    parts.append('<section id="recipe-differences"><h2>Recipe differences</h2>')
    if not changes:
        parts.append('<p class="muted">' + ("The resolved recipes are identical." if len(runs) > 1
                                            else "Only one run.") + "</p>")
    else:
        parts.append("<table><thead><tr><th>key</th>" + "".join(f"<th>{_e(r.label)}</th>" for r in runs)
                     + "</tr></thead><tbody>")
        for key, vals in changes:
            parts.append(f"<tr><th><code>{_e(key)}</code></th>"
                         + "".join(f"<td><code>{_e(fmt_value(v))}</code></td>" for v in vals) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("</section>")
    # metrics
    mrows = metric_rows(runs)
    title = "Metrics"
    parts.append(f'<section id="metrics"><h2>{title}</h2>')
    if len(runs) > 1:
        parts.append(f'<p class="muted">Differences (Δ) are against {_e(runs[0].label)}; brackets are 95% '
                     "confidence intervals where the run computed them.</p>")
    if not mrows:
        parts.append('<p class="muted">None of these runs has metrics.</p>')
    else:
        parts.append("<table><thead><tr><th>section</th><th>metric</th>"
                     + "".join(f"<th>{_e(r.label)}</th>" for r in runs) + "</tr></thead><tbody>")
        for row in mrows:
            cells = []
            for i, (v, ci, d) in enumerate(zip(row.values, row.cis, row.deltas())):
                text = _e(_fmt_metric(v, row.metric))
                if row.spread and row.spread[i] is not None:
                    text += f" ± {row.spread[i]:.4f}"
                if ci:
                    text += f' <span class="ci">{_e(_fmt_ci(ci))}</span>'
                if i > 0 and d is not None:
                    cls = "" if row.metric == "n" or d == 0 else ("up" if d > 0 else "down")
                    text += f' <span class="{cls or "muted"}">({_e(_fmt_delta(d, row.metric))})</span>'
                cells.append(f'<td class="num">{text}</td>')
            parts.append(f"<tr><td>{_e(row.section)}</td><th>{_e(row.metric)}</th>{''.join(cells)}</tr>")
        parts.append("</tbody></table>")
    parts.append("</section>")
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    parts.append(f'<p class="muted">written by hemaflow compare at {_e(stamp)}</p></main>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<link rel=\"icon\" href=\"data:,\"><title>hemaflow compare</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")
