"""Issue 15 audit: the checks that the other reliability tests did not make.

A hung task (an item that never returns) is stopped by the ``processes`` executor's per-item
``timeout`` and fails its step naming the item; a report whose write fails halfway (the disk
fills while the page is written, not only at the flush) leaves no page and a run that says
``failed``; the real ``/etc/shadow`` as a parent recipe echoes none of its content; Macenko's
flagged images are shown in the report beside their warning.
"""

from __future__ import annotations

import errno
import json
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from hemaflow.core.cli import main
from hemaflow.core.errors import TaskTimeoutError
from hemaflow.plugins.executors import ProcessExecutor, SerialExecutor

RECIPES = Path(__file__).parent / "recipes"


from tests.plugins.test_executors import deadline, square  # noqa: E402  (one hang guard for both files)


def square_or_hang(x: int) -> int:
    if x == 3:
        time.sleep(3600)
    return x * x


# -- a hung task ------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers,chunksize", [(2, 1), (2, 3), (1, 1)])
def test_a_hung_item_fails_the_map_after_the_timeout_naming_it(workers, chunksize):
    t0 = time.perf_counter()
    with deadline(60), pytest.raises(TaskTimeoutError) as exc:
        ProcessExecutor(workers=workers, chunksize=chunksize, timeout=0.5).map(square_or_hang, range(6))
    assert time.perf_counter() - t0 < 30
    assert exc.value.item == "item 4 of 6 (3)"
    assert str(exc.value) == ("item 4 of 6 (3) did not finish within the executor's timeout of 0.5 s: its worker "
                              "was stopped (a hung task, or raise executor.with.timeout)")


def test_a_long_path_is_named_by_its_end():
    from hemaflow.plugins.executors import describe_item

    long = "/cache/steps/f2/" + "f" * 80 + "/images/im_003.png"
    assert describe_item((long, 3)) == "..." + long[-77:] and describe_item(long).endswith("/images/im_003.png")
    assert describe_item(Path(long)) == describe_item(long) and len(describe_item(long)) == 80


def test_a_timeout_changes_no_result():
    items = list(range(12))
    with deadline(60):
        assert ProcessExecutor(workers=2, timeout=30).map(square, items) == SerialExecutor().map(square, items)
        assert ProcessExecutor(workers=2, timeout=30).map(square, []) == []


HUNG_RECIPE = """\
name: hung_worker
seed: 0
device: cpu
executor: {uses: processes, with: {workers: 2, timeout: 1}}
steps:
  data:
    uses: synthetic_smears
    with: {patients_per_class: 1, images_per_patient: 2, image_size: 64}
  normalize:
    uses: reinhard
    inputs: {images: data}
"""


def _hang(item):
    time.sleep(3600)


def test_a_hung_step_fails_the_run_with_exit_3_naming_the_image(tmp_path, monkeypatch, capsys):
    from hemaflow.plugins import normalize

    recipe = tmp_path / "r.yaml"
    recipe.write_text(HUNG_RECIPE)
    with monkeypatch.context() as m:
        m.setattr(normalize, "_normalize_one", _hang)  # forked workers inherit it
        with deadline(120):
            code = main(["run", str(recipe), "--out", str(tmp_path / "hung")])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "Traceback" not in err and "internal error" not in err
    line = err.strip().splitlines()[0]
    assert line.startswith("error: step 'normalize' (reinhard): item ")
    assert "did not finish within the executor's timeout of 1 s: its worker was stopped" in line
    assert re.search(r"item \d+ of 10 \((P\d+_\d+|\.\.\.[^ ]*/P\d+_\d+\.png)\) did not", line), line  # named by its image file
    prov = json.loads((tmp_path / "hung" / "provenance.json").read_text())
    assert prov["status"] == "failed" and "timeout" in prov["error"]
    # the finished step stays; without the hang the run completes from it
    with deadline(120):
        # (a generous timeout: a fresh worker's first image also pays its imports)
        assert main(["run", str(recipe), "--out", str(tmp_path / "again"), "--set", "executor.with.timeout=120"]) == 0
    steps = json.loads((tmp_path / "again" / "provenance.json").read_text())["steps"]
    assert [(s["id"], s["cache_hit"]) for s in steps] == [("data", True), ("normalize", False)]


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_timeout_that_is_not_a_positive_number_is_invalid(value, capsys):
    code = main(["validate", str(RECIPES / "tiny.yaml"), "--set", "executor={uses: processes}",
                 "--set", f"executor.with.timeout={value}"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "/executor/with/timeout" in err and "Traceback" not in err


# -- a write that fails halfway ---------------------------------------------------------------------
def test_a_disk_that_fills_while_the_report_is_written_leaves_no_page(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["run", str(RECIPES / "tiny.yaml"), "--out", str(out)]) == 0
    real = Path.write_text

    def full_disk(self, text, *a, **k):
        if self.name.startswith(".report.html"):  # the temporary page: half of it fits, then ENOSPC
            real(self, text[: len(text) // 2], *a, **k)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *a, **k)

    monkeypatch.setattr(Path, "write_text", full_disk)
    capsys.readouterr()
    assert main(["run", str(RECIPES / "tiny.yaml"), "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert "No space left on device" in err and "internal error" not in err and "Traceback" not in err
    assert not (out / "report.html").exists()  # neither half a page nor the older run's page
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["status"] == "failed" and "No space left" in prov["error"]


# -- a file that is not a recipe --------------------------------------------------------------------
@pytest.mark.skipif(not os.access("/etc/shadow", os.R_OK), reason="/etc/shadow not readable here")
def test_extends_etc_shadow_echoes_none_of_it(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("extends: /etc/shadow\nname: r\n")
    code = main(["validate", str(recipe)])
    out, err = capsys.readouterr()
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("/etc/shadow:") and "not a hemaflow recipe" in lines[0]
    shadow = Path("/etc/shadow").read_text()
    for word in {w for row in shadow.splitlines() for w in row.split(":") if len(w) >= 3}:
        assert word not in out + err.replace("/etc/shadow", ""), word


# -- the background check in the report -------------------------------------------------------------
def test_macenko_flagged_images_are_shown_in_the_report(tmp_path):
    from hemaflow.plugins.normalize import MacenkoNormalizer
    from hemaflow.testing import make, make_context
    from tests.plugins.seg_fixtures import BG, field, image_set

    img, _ = field(seed=1)
    img = img.copy()
    img[np.abs(img.astype(int) - np.array(BG)).sum(-1) < 30] = (230, 232, 250)  # turns lavender
    ref, _ = field(seed=0)
    images = image_set(tmp_path / "data", [(img, None), (ref, None)])
    ctx = make_context(tmp_path / "work")
    make(MacenkoNormalizer, reference=str(images.image_path("im1")), background_check="warn").run(ctx, images=images)
    [warning] = [w for w in ctx.warnings if "background" in w]
    galleries = [i for i in ctx.report.items if i["type"] == "gallery" and "moved away from white" in i["title"]]
    assert len(galleries) == 1 and galleries[0]["section"] == "normalization"
    [shown] = galleries[0]["images"]
    assert shown["caption"].startswith("im0: before | after; background moved away from white by delta E ")
    assert "im0" in warning or str(images.image_path("im0")) in warning
    assert (ctx.report.path / shown["file"]).is_file()


# -- --no-cache leaves no temporary cache behind ------------------------------------------------------
@pytest.mark.parametrize("fails", ["nothing", "a-step", "the-report"])
def test_a_no_cache_run_removes_its_temporary_cache(fails, tmp_path, monkeypatch):
    import tempfile

    from hemaflow.plugins.report import HtmlReporter
    from hemaflow.plugins.segment import ClassicalSegmenter

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    def boom(*a, **k):
        raise RuntimeError("boom")

    if fails == "a-step":
        monkeypatch.setattr(ClassicalSegmenter, "run", boom)
    if fails == "the-report":
        monkeypatch.setattr(HtmlReporter, "render", boom)
    code = main(["run", str(RECIPES / "tiny.yaml"), "--out", str(tmp_path / "out"), "--no-cache"])
    assert code == (0 if fails == "nothing" else 3)
    assert list(tmp.glob("hemaflow-nocache-*")) == []
