"""The ``html`` reporter: one self-contained ``report.html`` per run.

Self-contained means it opens from disk with no network: CSS is inline, PNG images are inlined
as ``data:`` URIs, SVG figures are inlined as markup, and there is no JavaScript. Sections:
run summary, metrics (with confidence intervals and per-fold values), every step's report items
in step order (stain examples, segmentation overlays, confusion matrices, ROC and learning
curves, MIL galleries, attention bars...), warnings, predictions, the resolved recipe and the
provenance.

Example::

    path = HtmlReporter(**defaults(HtmlReporter)).write(run_dir, run)
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import re
from pathlib import Path
from typing import Any

from hemaflow.core import atomic
from hemaflow.core.bases import Reporter
from hemaflow.core.markers import hookimpl

LEVEL_ORDER = ("patient", "image", "cell", "segmentation")
HEADLINE = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "dice", "iou", "n")

CSS = """
:root { --fg:#1d2330; --muted:#5c6577; --line:#d9dde5; --bg:#ffffff; --soft:#f4f6f9; --accent:#7a2e8e; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; }
header { background: var(--accent); color: #fff; padding: 18px 28px; }
header h1 { margin: 0; font-size: 22px; }
header p { margin: 4px 0 0; opacity: .9; }
nav { padding: 8px 28px; background: var(--soft); border-bottom: 1px solid var(--line); }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
main { padding: 8px 28px 40px; max-width: 1280px; }
h2 { border-bottom: 2px solid var(--line); padding-bottom: 4px; margin-top: 32px; }
h3 { margin: 22px 0 6px; }
h4 { margin: 14px 0 6px; color: var(--muted); }
table { border-collapse: collapse; margin: 6px 0 12px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.ci { color: var(--muted); font-size: 12px; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px; margin-left: 6px; }
.cached { background: #e3f1e6; color: #1f6b32; } .ran { background: #e6ecf8; color: #23407a; }
.warn { background: #fff4dc; border-left: 4px solid #e0a100; padding: 4px 10px; margin: 4px 0; }
.muted { color: var(--muted); }
.step { border: 1px solid var(--line); border-radius: 6px; padding: 4px 16px 12px; margin: 14px 0; }
.figure svg, .figure img { max-width: 100%; height: auto; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.gallery figure { margin: 0; max-width: 260px; }
.gallery img { width: 200px; height: auto; image-rendering: pixelated; border: 1px solid var(--line); }
figcaption { font-size: 12px; color: var(--muted); }
pre { background: var(--soft); padding: 10px; overflow: auto; font-size: 12px; border: 1px solid var(--line); }
details > summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """Numbers at four decimals (integers as they are), None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def fmt_ci(ci: Any) -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci):
        return f"[{ci[0]:.4f}, {ci[1]:.4f}]"
    return ""


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def table_html(rows: list[dict[str, Any]], *, max_rows: int = 0, numeric_right: bool = True) -> str:
    """Render row dicts as an HTML table (columns in first-seen order)."""
    if not rows:
        return '<p class="muted">(empty table)</p>'
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    shown = rows if not max_rows or len(rows) <= max_rows else rows[:max_rows]
    out = ["<table><thead><tr>", *(f"<th>{esc(c)}</th>" for c in cols), "</tr></thead><tbody>"]
    for r in shown:
        out.append("<tr>")
        for c in cols:
            v = r.get(c)
            cls = ' class="num"' if numeric_right and isinstance(v, (int, float)) and not isinstance(v, bool) else ""
            out.append(f"<td{cls}>{esc(fmt(v))}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    if len(shown) < len(rows):
        out.append(f'<p class="muted">showing {len(shown)} of {len(rows)} rows</p>')
    return "".join(out)


_SVG_PROLOG = re.compile(r"^\s*(<\?xml[^>]*\?>\s*)?(<!DOCTYPE[^>]*>\s*)?", re.S)


def inline_svg(text: str) -> str:
    """SVG markup fit for inlining in HTML (XML prolog and DOCTYPE removed)."""
    return _SVG_PROLOG.sub("", text, count=1)


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def page(title: str, body: str, *, css: str = CSS) -> str:
    """A complete self-contained HTML page."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            # an empty icon keeps the browser from asking the network (or disk) for favicon.ico
            "<link rel=\"icon\" href=\"data:,\">"
            f"<title>{esc(title)}</title><style>{css}</style></head><body>{body}</body></html>\n")


class HtmlReporter(Reporter):
    """Writes ``report.html``: a self-contained page about one run (no network needed)."""

    kind = "reporter"
    name = "html"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "default": "",
                      "description": "page title; empty: 'hemaflow report: <recipe name>'"},
            "max_table_rows": {"type": "integer", "minimum": 1, "default": 200,
                               "description": "longest table shown in full; longer tables are cut"},
            "prediction_rows": {"type": "integer", "minimum": 0, "default": 50,
                                "description": "rows of predictions.csv shown (0: none)"},
            "include_provenance": {"type": "boolean", "default": True,
                                   "description": "append provenance.json to the page"},
        },
        "additionalProperties": False,
    }

    def write(self, run_dir: Path, run: dict[str, Any]) -> Path:
        """Write ``run_dir/report.html`` for ``run`` (see the module docstring) and return its path."""
        run_dir = Path(run_dir)
        path = run_dir / "report.html"
        atomic.write_text(path, self.render(run))  # never a truncated page (disk full, a crash)
        return path

    # -- page ------------------------------------------------------------------------------
    def render(self, run: dict[str, Any]) -> str:
        name = run.get("name") or "run"
        title = self.params.get("title") or f"hemaflow report: {name}"
        steps = run.get("steps") or []
        sections = [
            ("summary", "Run summary", self._summary(run)),
            ("metrics", "Metrics", self._metrics(run.get("metrics") or {})),
            ("steps", "Steps", self._steps(steps)),
            ("warnings", "Warnings and skips", self._warnings(steps)),
        ]
        preds = run.get("predictions")
        if preds is not None and self.params.get("prediction_rows", 50):
            sections.append(("predictions", "Predictions", self._predictions(preds)))
        sections.append(("recipe", "Resolved recipe", f"<pre>{esc(run.get('recipe_yaml') or '')}</pre>"))
        if self.params.get("include_provenance", True):
            sections.append(("provenance", "Provenance", self._provenance(run.get("provenance") or {})))
        desc = (run.get("recipe") or {}).get("description") or ""
        body = [f"<header><h1>{esc(title)}</h1>",
                f"<p>{esc(desc)}</p>" if desc else "",
                "</header><nav>", *(f'<a href="#{sid}">{esc(h)}</a>' for sid, h, _ in sections), "</nav><main>"]
        for sid, heading, content in sections:
            body.append(f'<section id="{sid}"><h2>{esc(heading)}</h2>{content}</section>')
        body.append(f'<p class="muted">written by hemaflow at {esc(_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))}</p>')
        body.append("</main>")
        return page(title, "".join(body))

    def _summary(self, run: dict[str, Any]) -> str:
        recipe = run.get("recipe") or {}
        steps = run.get("steps") or []
        data = []
        for s in steps:
            if s.get("kind") == "dataset":
                params = (recipe.get("steps") or {}).get(s["id"], {}).get("with") or {}
                shown = ", ".join(f"{k}={v}" for k, v in params.items())
                data.append(f"{s['uses']}" + (f" ({shown})" if shown else ""))
        hits = sum(1 for s in steps if s.get("cached"))
        prov = run.get("provenance") or {}
        rows = [
            ("recipe", run.get("name") or recipe.get("name", "")),
            ("data set", "; ".join(data) or "–"),
            ("seed", recipe.get("seed", prov.get("seed", "–"))),
            ("device", recipe.get("device", prov.get("device", "–"))),
            ("started", run.get("started") or "–"),
            ("duration", fmt_seconds(run.get("duration_s"))),
            ("steps", len(steps)),
            ("cache hits", f"{hits} of {len(steps)}"),
            ("warnings", sum(len(s.get("warnings") or []) for s in steps)),
            ("run directory", str(run.get("run_dir") or "")),
        ]
        versions = prov.get("versions") or {}
        if isinstance(versions, dict) and versions.get("hemaflow"):
            rows.append(("hemaflow", versions["hemaflow"]))
        elif prov.get("hemaflow"):
            rows.append(("hemaflow", prov["hemaflow"]))
        return "<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in rows) + "</table>"

    def _metrics(self, metrics: dict[str, Any]) -> str:
        if not metrics:
            return '<p class="muted">This run computed no metrics.</p>'
        out = []
        sections = [k for k in LEVEL_ORDER if isinstance(metrics.get(k), dict)]
        sections += [k for k, v in metrics.items() if isinstance(v, dict) and k not in sections]
        for sec in sections:
            m = metrics[sec]
            rows = []
            for k, v in m.items():
                if k.endswith("_ci") or isinstance(v, (dict, list)) or (v is None and k not in HEADLINE):
                    continue
                ci = fmt_ci(m.get(f"{k}_ci"))
                rows.append(f"<tr><th>{esc(k)}</th><td class=\"num\">{esc(fmt(v))}</td>"
                            f"<td class=\"ci\">{esc(ci)}</td></tr>")
            out.append(f"<h3>{esc(sec)}</h3><table><thead><tr><th>metric</th><th>value</th>"
                       f"<th>95% CI</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")
            if isinstance(m.get("confusion_matrix"), dict):
                out.append(self._confusion(m["confusion_matrix"]))
            if isinstance(m.get("per_class"), dict):
                pc = [{"class": c, **v} for c, v in m["per_class"].items() if isinstance(v, dict)]
                out.append(f"<details><summary>per class ({esc(sec)})</summary>{table_html(pc)}</details>")
        folds = metrics.get("folds")
        if isinstance(folds, list) and folds:
            rows = []
            for f in folds:
                for lv, vals in f.items():
                    if isinstance(vals, dict):
                        rows.append({"fold": f.get("fold"), "level": lv,
                                     **{k: v for k, v in vals.items() if not isinstance(v, (dict, list))}})
            out.append(f"<h3>folds</h3>{table_html(rows)}")
        return "".join(out)

    @staticmethod
    def _confusion(cm: dict[str, Any]) -> str:
        labels, matrix = cm.get("labels") or [], cm.get("matrix") or []
        head = "".join(f"<th>{esc(c)}</th>" for c in labels)
        body = "".join(f"<tr><th>{esc(labels[i] if i < len(labels) else i)}</th>"
                       + "".join(f'<td class="num">{esc(v)}</td>' for v in row) + "</tr>"
                       for i, row in enumerate(matrix))
        return (f'<table class="confusion"><thead><tr><th>true \\ predicted</th>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")

    def _steps(self, steps: list[dict[str, Any]]) -> str:
        if not steps:
            return '<p class="muted">No steps.</p>'
        out = []
        for s in steps:
            badge = '<span class="badge cached">cached</span>' if s.get("cached") else '<span class="badge ran">ran</span>'
            head = (f'<h3 id="step-{esc(s["id"])}">{esc(s["id"])} <span class="muted">· {esc(s.get("uses", ""))}'
                    f' ({esc(s.get("kind", ""))})</span>{badge}<span class="muted"> {esc(fmt_seconds(s.get("seconds")))}</span></h3>')
            parts = [head]
            outputs = s.get("outputs") or {}
            if outputs:
                parts.append("<p>" + "; ".join(f"<b>{esc(k)}</b>: {esc(v)}" for k, v in outputs.items()) + "</p>")
            for w in s.get("warnings") or []:
                parts.append(f'<div class="warn">{esc(w)}</div>')
            report_dir = Path(s["report_dir"]) if s.get("report_dir") else None
            last_section = None
            for item in s.get("report_items") or []:
                sec = item.get("section") or ""
                if sec and sec != last_section:
                    parts.append(f"<h4>{esc(sec)}</h4>")
                last_section = sec
                parts.append(self._item(item, report_dir))
            out.append(f'<div class="step">{"".join(parts)}</div>')
        return "".join(out)

    def _item(self, item: dict[str, Any], report_dir: Path | None) -> str:
        kind = item.get("type")
        title = f"<h4>{esc(item.get('title', ''))}</h4>" if item.get("title") else ""
        caption = f"<figcaption>{esc(item['caption'])}</figcaption>" if item.get("caption") else ""

        def read(name: str) -> bytes | None:
            if report_dir is None or not name:
                return None
            p = report_dir / name
            return p.read_bytes() if p.exists() else None

        if kind == "text":
            return title + "".join(f"<p>{esc(par)}</p>" for par in str(item.get("text", "")).split("\n\n"))
        if kind == "html":
            return title + str(item.get("html", ""))
        if kind == "table":
            return title + table_html(item.get("rows") or [], max_rows=self.params.get("max_table_rows", 200))
        if kind == "image":
            data = read(item.get("file", ""))
            if data is None:
                return title + f'<p class="muted">(missing image {esc(item.get("file"))})</p>'
            return (f'{title}<figure class="figure"><img alt="{esc(item.get("title", ""))}" '
                    f'src="{data_uri(data)}">{caption}</figure>')
        if kind == "svg":
            data = read(item.get("file", ""))
            if data is None:
                return title + f'<p class="muted">(missing figure {esc(item.get("file"))})</p>'
            return f'{title}<figure class="figure">{inline_svg(data.decode("utf-8"))}{caption}</figure>'
        if kind == "gallery":
            figs = []
            for im in item.get("images") or []:
                data = read(im.get("file", ""))
                if data is None:
                    continue
                figs.append(f'<figure><img alt="{esc(im.get("caption", ""))}" src="{data_uri(data)}">'
                            f'<figcaption>{esc(im.get("caption", ""))}</figcaption></figure>')
            return f'{title}<div class="gallery">{"".join(figs)}</div>'
        return title + f'<pre>{esc(json.dumps(item, indent=1, default=str))}</pre>'

    @staticmethod
    def _warnings(steps: list[dict[str, Any]]) -> str:
        rows = [f'<div class="warn"><b>{esc(s["id"])}</b>: {esc(w)}</div>'
                for s in steps for w in (s.get("warnings") or [])]
        return "".join(rows) or '<p class="muted">No warnings; nothing was skipped.</p>'

    def _predictions(self, preds: Any) -> str:
        n = self.params.get("prediction_rows", 50)
        counts = preds.groupby("level").size().to_dict() if "level" in preds.columns else {"all": len(preds)}
        head = "<p>" + ", ".join(f"{esc(k)}: {v} rows" for k, v in counts.items()) + " (predictions.csv)</p>"
        rows = preds.head(n).to_dict("records")
        return head + f"<details><summary>first {min(n, len(preds))} rows</summary>{table_html(rows)}</details>"

    @staticmethod
    def _provenance(prov: dict[str, Any]) -> str:
        text = json.dumps(prov, indent=1, default=str)
        return f"<details><summary>provenance.json</summary><pre>{esc(text)}</pre></details>"


@hookimpl
def register_reporters(register: Any) -> None:
    register(HtmlReporter)
