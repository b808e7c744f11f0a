"""The html reporter on a run built from real evaluator outputs."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import yaml

from hemaflow.plugins.evaluate import ClassificationEvaluator, SegmentationEvaluator
from hemaflow.plugins.report import HtmlReporter, inline_svg
from hemaflow.testing import check_component, make, make_context
from tests.plugins.test_evaluate import image_predictions, make_seg_data

SECTIONS = ["Run summary", "Metrics", "Steps", "Warnings and skips", "Predictions", "Resolved recipe",
            "Provenance"]


def build_run(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A run dict as the runner hands it to reporters, from real evaluator runs on small artifacts."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)
    images, masks = make_seg_data(tmp_path / "seg")
    preds = image_predictions(tmp_path / "preds")
    recipe = {"name": "tiny_eval", "description": "evaluators on hand-made artifacts", "seed": 0, "device": "cpu",
              "steps": {"data": {"uses": "test_fixture", "with": {"images": 3}},
                        "seg_eval": {"uses": "segmentation", "inputs": {"masks": "data", "images": "data"},
                                     "with": {"target": "both"}},
                        "cls_eval": {"uses": "classification", "inputs": {"predictions": "data"},
                                     "with": {"n_bootstrap": 100}}}}
    steps = [{"id": "data", "uses": "test_fixture", "kind": "dataset", "cached": True, "seconds": 0.01,
              "warnings": [], "outputs": {"images": images.summary()}, "report_dir": tmp_path / "none",
              "report_items": []}]
    metrics: dict[str, Any] = {}
    for sid, cls, kwargs in [("seg_eval", SegmentationEvaluator, {"masks": masks, "images": images}),
                             ("cls_eval", ClassificationEvaluator, {"predictions": preds})]:
        ctx = make_context(tmp_path / "cache" / sid, step_id=sid)
        out = make(cls, **recipe["steps"][sid]["with"]).run(ctx, **kwargs)
        metrics.update(out["metrics"].values)
        steps.append({"id": sid, "uses": cls.name, "kind": cls.kind, "cached": False, "seconds": 0.5,
                      "warnings": list(ctx.warnings), "outputs": {"metrics": out["metrics"].summary()},
                      "report_dir": ctx.report.path, "report_items": ctx.report.items})
    steps[1]["warnings"].append("1 image(s) without a ground-truth mask skipped (e.g. x)")
    run = {"name": "tiny_eval", "recipe": recipe, "recipe_yaml": yaml.safe_dump(recipe, sort_keys=False),
           "provenance": {"seed": 0, "versions": {"hemaflow": "0.1.0"}}, "metrics": metrics,
           "predictions": preds.table, "duration_s": 75.3, "started": "2026-11-27T20:00:00+00:00",
           "run_dir": run_dir, "steps": steps}
    return run_dir, run


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: dict[str, list[str]] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open.append(tag)

    def handle_endtag(self, tag):
        if tag in self._open:
            while self._open and self._open.pop() != tag:
                pass

    def handle_data(self, data):
        if self._open:
            self.text.setdefault(self._open[-1], []).append(data)


def test_reporter_contract():
    check_component(HtmlReporter)


def test_report_from_evaluator_outputs(tmp_path):
    run_dir, run = build_run(tmp_path)
    path = make(HtmlReporter).write(run_dir, run)
    assert path == run_dir / "report.html"
    text = path.read_text()
    p = _Collect()
    p.feed(text)
    assert [t.strip() for t in p.text["h2"]] == SECTIONS
    # self-contained: every src/href is a data URI or an anchor; no scripts
    refs = [v for tag, a in p.tags for k, v in a.items() if k in ("src", "href", "xlink:href")]
    assert refs and all(v.startswith(("data:", "#")) for v in refs), [v for v in refs if not v.startswith(("data:", "#"))]
    assert "<script" not in text
    # summary: recipe, data set, seed, duration, cache hits
    assert "<th>data set</th><td>test_fixture (images=3)</td>" in text
    assert "<th>duration</th><td>1 min 15 s</td>" in text
    assert "<th>cache hits</th><td>1 of 3</td>" in text
    # metrics with the hand-checked values and CIs
    pat = run["metrics"]["patient"]
    lo, hi = pat["balanced_accuracy_ci"]
    assert (f'<th>balanced_accuracy</th><td class="num">0.7500</td><td class="ci">[{lo:.4f}, {hi:.4f}]</td>'
            in text)
    assert '<th>dice</th><td class="num">0.5000</td>' in text
    assert '<th>true \\ predicted</th><th>ALL</th><th>HEM</th>' in text
    # step items: confusion + ROC as inline SVG, segmentation overlays as inline PNGs
    assert text.count("<svg") == 2 and "<?xml" not in text
    assert len(re.findall(r'<img alt="[abc]: Dice', text)) == 3
    assert '<div class="warn"><b>seg_eval</b>: 1 image(s) without a ground-truth mask skipped (e.g. x)</div>' in text
    assert "image: 8 rows (predictions.csv)" in text
    assert "name: tiny_eval" in text  # resolved recipe


def test_report_without_metrics_and_missing_files(tmp_path):
    run = {"name": "empty", "recipe": {"name": "empty"}, "recipe_yaml": "name: empty\n", "provenance": {},
           "metrics": {}, "predictions": None, "duration_s": 2.0, "started": "", "run_dir": tmp_path,
           "steps": [{"id": "s", "uses": "x", "kind": "normalizer", "cached": False, "seconds": 1.0,
                      "warnings": [], "outputs": {}, "report_dir": tmp_path / "gone",
                      "report_items": [{"type": "svg", "title": "t", "file": "item000.svg"},
                                       {"type": "text", "title": "note", "text": "a < b"}]}]}
    text = make(HtmlReporter, include_provenance=False).write(tmp_path, run).read_text()
    assert "This run computed no metrics." in text
    assert "(missing figure item000.svg)" in text
    assert "<p>a &lt; b</p>" in text
    assert 'id="predictions"' not in text and 'id="provenance"' not in text


def test_inline_svg_strips_prolog():
    src = '<?xml version="1.0" encoding="utf-8" standalone="no"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN"\n "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n<svg a="1"></svg>'
    assert inline_svg(src) == '<svg a="1"></svg>'


TINY_RUN = """\
name: tiny_report
description: tiny segmentation + classification run for the report test
seed: 0
steps:
  data:
    uses: synthetic_smears
    with: {classes: [ALL, NORMAL], patients_per_class: 3, images_per_patient: 2, image_size: 160}
  split:
    uses: patient_kfold
    inputs: {images: data}
    with: {k: 3}
  seg:
    uses: classical
    inputs: {images: data}
  seg_eval:
    uses: segmentation
    inputs: {masks: seg, images: data}
    with: {partition: all, n_overlays: 2}
  truth:
    uses: ground_truth
    inputs: {images: data}
  cells:
    uses: cell_crops
    inputs: {images: data, masks: truth}
    with: {crop_size: 32}
  features:
    uses: radiomics
    inputs: {cells: cells}
    with: {classes: [firstorder]}
  clf:
    uses: sklearn_classifier
    inputs: {features: features, split: split}
  eval:
    uses: classification
    inputs: {predictions: clf, split: split}
    with: {n_bootstrap: 200}
"""


def run_tiny(tmp_path: Path, out: str, *overrides: str) -> Path:
    """Run the tiny recipe with the real runner (``hemaflow run``) into ``tmp_path/out``."""
    from hemaflow.core.cli import main

    recipe = tmp_path / "tiny_report.yaml"
    recipe.write_text(TINY_RUN)
    args = ["run", str(recipe), "--out", str(tmp_path / out)]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 0
    return tmp_path / out


def test_report_from_real_tiny_run(tmp_path):
    run_dir = run_tiny(tmp_path, "run")
    text = (run_dir / "report.html").read_text()
    p = _Collect()
    p.feed(text)
    assert [t.strip() for t in p.text["h2"]] == SECTIONS
    refs = [v for tag, a in p.tags for k, v in a.items() if k in ("src", "href", "xlink:href")]
    assert all(v.startswith(("data:", "#")) for v in refs)
    metrics_html = text.split('<section id="metrics">')[1].split("</section>")[0]
    assert re.findall(r"<h3>(\w+)</h3>", metrics_html) == ["patient", "image", "cell", "segmentation", "folds"]
    steps = [a["id"][5:] for tag, a in p.tags if tag == "h3" and (a.get("id") or "").startswith("step-")]
    assert steps == ["data", "split", "seg", "seg_eval", "truth", "cells", "features", "clf", "eval"]
    assert "<th>cache hits</th><td>0 of 9</td>" in text
    assert "Worst 2 by Dice cell: true (green) vs predicted (magenta) contours" in text
    assert text.count("<svg") >= 2  # confusion matrices and ROC curves
    metrics = __import__("json").loads((run_dir / "metrics.json").read_text())
    lo, hi = metrics["patient"]["balanced_accuracy_ci"]
    assert f'<td class="ci">[{lo:.4f}, {hi:.4f}]</td>' in text
