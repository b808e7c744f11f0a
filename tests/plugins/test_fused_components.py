"""The built-in per-image components (macenko/reinhard, classical, morphology, cell_crops) as
fused chains (hemaflow.core.chain): on tiny synthetic fields, a fused run and a run with
``HEMAFLOW_FUSE=0`` give the same cache keys, the same bytes of every output artifact, the
same warnings and the same skipped images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hemaflow.core.plugins import get_registry
from hemaflow.core.recipe import load_recipe
from hemaflow.core.runner import Runner
from hemaflow.core.validate import resolve

# the headline's wiring (recipes/mil_multimodal.yaml): segment on the raw fields, crops of the
# normalized ones; segment -> postprocess -> cells fuse, normalize runs on its own before them
HEADLINE = """name: fused_headline
seed: 0
device: cpu
executor: {{uses: {executor}}}
steps:
  data: {{uses: synthetic_smears, with: {{patients_per_class: 1, images_per_patient: 2, image_size: 96}}}}
  split: {{uses: patient_kfold, inputs: {{images: data}}, with: {{k: 2}}}}
  normalize: {{uses: macenko, inputs: {{images: data, split: split}}, with: {{on_failure: passthrough}}}}
  segment: {{uses: classical, inputs: {{images: data}}}}
  postprocess: {{uses: morphology, inputs: {{masks: segment}}}}
  cells: {{uses: cell_crops, inputs: {{images: normalize, masks: postprocess}}, with: {{crop_size: 24}}}}
"""

# normalize heads the chain (resized images, so cells' images are no longer the segment's input)
NORMALIZED_CHAIN = """name: fused_normalized
seed: 0
device: cpu
executor: {{uses: {executor}}}
steps:
  data: {{uses: {data}}}
  normalize: {{uses: reinhard, inputs: {{images: data}}, with: {{resize: [80, 88], on_failure: {on_failure}}}}}
  segment: {{uses: classical, inputs: {{images: normalize}}, with: {{algorithm: threshold, on_error: skip}}}}
  postprocess: {{uses: morphology, inputs: {{masks: segment}}, with: {{min_area: 20}}}}
  cells: {{uses: cell_crops, inputs: {{images: normalize, masks: postprocess}}, with: {{crop_size: 20, scale: resize}}}}
"""

# cells right after a segmenter (no instances_path: connected components)
NO_POSTPROCESS = """name: fused_no_post
seed: 0
device: cpu
steps:
  data: {uses: synthetic_smears, with: {patients_per_class: 1, images_per_patient: 1, image_size: 80}}
  segment: {uses: classical, inputs: {images: data}}
  cells: {uses: cell_crops, inputs: {images: data, masks: segment}, with: {crop_size: 16, on_error: skip}}
"""


def run(tmp: Path, name: str, text: str, *, fuse: bool, monkeypatch, cache: str = "") -> tuple[Any, dict[str, Any]]:
    monkeypatch.setenv("HEMAFLOW_FUSE", "1" if fuse else "0")
    path = tmp / f"{name}.yaml"
    path.write_text(text)
    reg = get_registry()
    out = Runner(resolve(load_recipe(path), reg), reg, cache_dir=tmp / f"cache-{cache or name}").run(tmp / f"run-{name}")
    return out, json.loads((tmp / f"run-{name}" / "provenance.json").read_text())


def artifact_bytes(res) -> dict[str, bytes]:
    files = {}
    for name, art in res.outputs.items():
        for f in sorted(art.path.rglob("*")):
            if f.is_file():
                files[f"{name}/{f.relative_to(art.path)}"] = f.read_bytes()
    return files


def same_tree(tmp: Path, text: str, monkeypatch, name: str = "r") -> tuple[Any, Any, dict, dict]:
    """The recipe fused and unfused in the same directory (so paths in metadata agree too)."""
    import shutil

    plain, p_prov = run(tmp, name, text, fuse=False, monkeypatch=monkeypatch)
    saved = {s.id: artifact_bytes(s) for s in plain.steps}
    warnings = {s.id: list(s.warnings) for s in plain.steps}
    shutil.rmtree(tmp / f"cache-{name}")
    shutil.rmtree(tmp / f"run-{name}")
    fused, f_prov = run(tmp, name, text, fuse=True, monkeypatch=monkeypatch)
    for s in fused.steps:
        assert artifact_bytes(s) == saved[s.id], s.id  # every file, metadata included
        assert s.warnings == warnings[s.id], s.id
    assert [s["cache_key"] for s in p_prov["steps"]] == [s["cache_key"] for s in f_prov["steps"]]
    return plain, fused, p_prov, f_prov


@pytest.mark.parametrize("executor", ["serial", "processes"])
def test_headline_chain_fused_equals_unfused(tmp_path, monkeypatch, executor):
    _, fused, p_prov, f_prov = same_tree(tmp_path, HEADLINE.format(executor=executor), monkeypatch)
    chain = ["segment", "postprocess", "cells"]
    assert {s["id"]: s.get("fused") for s in f_prov["steps"]} == {
        "data": None, "split": None, "normalize": None, "segment": chain, "postprocess": chain, "cells": chain}
    assert all("fused" not in s for s in p_prov["steps"])
    cells = fused.steps[-1].outputs["cells"]
    assert len(cells.table) > 0 and cells.crops.shape[1:] == (24, 24, 3)
    assert fused.steps[2].outputs["images"].meta["stain_outcomes"]["normalized"] > 0


def test_headline_fused_fills_the_cache_the_unfused_run_reads(tmp_path, monkeypatch):
    text = HEADLINE.format(executor="serial")
    run(tmp_path, "a", text, fuse=True, monkeypatch=monkeypatch)
    _, prov = run(tmp_path, "b", text, fuse=False, monkeypatch=monkeypatch, cache="a")
    assert all(s["cache_hit"] for s in prov["steps"])


def test_cells_after_a_segmenter_fuse_without_instances(tmp_path, monkeypatch):
    _, fused, _, f_prov = same_tree(tmp_path, NO_POSTPROCESS, monkeypatch)
    assert [s.get("fused") for s in f_prov["steps"]] == [None, ["segment", "cells"], ["segment", "cells"]]
    assert len(fused.steps[-1].outputs["cells"].table) > 0


def field_manifest(tmp: Path) -> Path:
    """A manifest of synthetic fields plus a blank white field (no stain: reinhard fails on it)."""
    from hemaflow.lib import imageio as io
    from hemaflow.plugins.datasets import SyntheticSmears
    from hemaflow.testing import make, make_context

    images = make(SyntheticSmears, patients_per_class=1, images_per_patient=1, classes=["AML", "CLL", "NORMAL"],
                  image_size=96).run(make_context(tmp / "smears"))["images"]
    folder = tmp / "fields"
    folder.mkdir()
    lines = ["image,patient,label"]
    for k, (_, row) in enumerate(images.table.iterrows()):
        io.write_png(folder / f"f{k}.png", images.read_image(str(row["image_id"])))
        lines.append(f"{folder / f'f{k}.png'},P{k},{row['label']}")
    io.write_png(folder / "blank.png", np.full((96, 96, 3), 250, np.uint8))
    lines.insert(2, f"{folder / 'blank.png'},PB,AML")  # second row: later rows shift by one
    (tmp / "manifest.csv").write_text("\n".join(lines) + "\n")
    return tmp / "manifest.csv"


@pytest.mark.parametrize("on_failure", ["skip", "passthrough"])
def test_normalizer_heads_the_chain_and_a_skipped_field_stays_out(tmp_path, monkeypatch, on_failure):
    manifest = field_manifest(tmp_path)
    data = f"{{uses: manifest, with: {{path: {manifest}}}}}".replace("{", "{{").replace("}", "}}")
    text = NORMALIZED_CHAIN.replace("{{uses: {data}}}", data).format(executor="serial", on_failure=on_failure)
    _, fused, _, f_prov = same_tree(tmp_path, text, monkeypatch)
    chain = ["normalize", "segment", "postprocess"]
    assert [s.get("fused") for s in f_prov["steps"]] == [None, chain, chain, chain, None]
    norm = fused.steps[1]
    ids = list(norm.outputs["images"].table["image_id"].astype(str))
    if on_failure == "skip":
        assert len(ids) == 3 and any("blank.png" in w and w.startswith("skipped") for w in norm.warnings)
    else:
        assert len(ids) == 4 and any("not normalized (kept as is)" in w for w in norm.warnings)
    assert list(fused.steps[2].outputs["masks"].table["image_id"].astype(str)) == ids
    assert list(fused.steps[3].outputs["masks"].table["image_id"].astype(str)) == ids


def test_a_field_that_cannot_be_normalized_stops_the_run_alike_fused_or_not(tmp_path, monkeypatch):
    from hemaflow.core.errors import StepError

    manifest = field_manifest(tmp_path)
    data = f"{{uses: manifest, with: {{path: {manifest}}}}}".replace("{", "{{").replace("}", "}}")
    text = NORMALIZED_CHAIN.replace("{{uses: {data}}}", data).format(executor="serial", on_failure="stop")
    messages = []
    for fuse in (False, True):
        with pytest.raises(StepError) as info:
            run(tmp_path, f"stop{int(fuse)}", text, fuse=fuse, monkeypatch=monkeypatch)
        messages.append(str(info.value).replace(f"stop{int(fuse)}", "X"))
        assert not (tmp_path / f"run-stop{int(fuse)}" / "error.log").exists()  # bad data: no traceback
    assert messages[0] == messages[1]
    assert "normalize" in messages[0] and "blank.png" in messages[0]
