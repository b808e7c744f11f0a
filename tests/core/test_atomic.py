"""Atomic writes of the run directory's files, its ``status``, and cleaning a reused ``--out``."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from hemaflow.core import atomic
from hemaflow.core.cli import main
from hemaflow.core.runner import clean_run_dir

RECIPES = Path(__file__).parent / "recipes"


def run(out: Path, *args: str) -> int:
    return main(["run", str(RECIPES / "tiny.yaml"), "--out", str(out), *args])


def provenance(run_dir: Path) -> dict:
    return json.loads((run_dir / "provenance.json").read_text())


def hidden(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith("."))


def test_write_text_replaces_the_file(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    atomic.write_text(target, "new")
    assert target.read_text() == "new" and hidden(tmp_path) == []


def test_a_write_that_raises_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "report.html"
    target.write_text("old page")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.replacing(target) as tmp:
            tmp.write_text("half a pa")
            raise RuntimeError("boom")
    assert target.read_text() == "old page" and hidden(tmp_path) == []


def _disk_full_for(name: str):
    real = atomic.os.fsync

    def fsync(fd):
        if name in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)
    return fsync


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_full_disk_while_writing_the_report_leaves_no_partial_page(tmp_path, monkeypatch, capsys):
    d = tmp_path / "a"
    assert run(d) == 0
    monkeypatch.setattr(atomic.os, "fsync", _disk_full_for("report.html"))
    assert run(d) == 3
    err = capsys.readouterr().err
    assert "error: step 'report' (html): OSError: [Errno 28] No space left on device" in err
    assert "internal error" not in err
    # the earlier page was removed at the start, the new one never completed: no page at all
    assert not (d / "report.html").exists() and hidden(d) == []
    assert provenance(d)["status"] == "failed"


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_full_disk_at_the_start_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(atomic.os, "fsync", _disk_full_for(str(tmp_path / "b")))
    assert run(tmp_path / "b") == 3
    err = capsys.readouterr().err
    assert err.strip() == f"error: {tmp_path / 'b'}: cannot write the run directory: No space left on device"
    assert hidden(tmp_path / "b") == [] and not (tmp_path / "b" / "provenance.json").exists()


def test_a_report_that_fails_leaves_no_page_and_says_failed(tmp_path, monkeypatch, capsys):
    from hemaflow.plugins.report import HtmlReporter

    assert run(tmp_path / "a") == 0
    assert (tmp_path / "a" / "report.html").exists()

    def broken(self, run):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(HtmlReporter, "render", broken)
    assert run(tmp_path / "a") == 3
    assert "error: step 'report' (html): RuntimeError: renderer crashed" in capsys.readouterr().err
    d = tmp_path / "a"
    # the earlier run's page is gone: a failed run never shows an older run's report
    assert not (d / "report.html").exists() and hidden(d) == []
    prov = provenance(d)
    assert prov["status"] == "failed" and "renderer crashed" in prov["error"]
    assert (d / "error.log").is_file() and "error.log" in prov["files"]


def test_a_failed_then_successful_run_into_one_out_leaves_no_error_log(tmp_path, monkeypatch):
    from hemaflow.plugins.report import HtmlReporter

    d = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(HtmlReporter, "render", lambda self, run: 1 / 0)
        assert run(d) == 3
    assert (d / "error.log").is_file() and provenance(d)["status"] == "failed"
    assert run(d) == 0
    assert not (d / "error.log").exists()
    prov = provenance(d)
    assert prov["status"] == "ok" and prov["error"] is None
    assert set(prov["files"]) >= {"recipe.resolved.yaml", "provenance.json", "metrics.json", "predictions.csv",
                                  "report.html"}


def test_provenance_says_running_until_the_report_is_written(tmp_path, monkeypatch):
    from hemaflow.plugins.report import HtmlReporter

    seen = {}
    render = HtmlReporter.render

    def spy(self, run):
        seen["file"] = provenance(run["run_dir"])["status"]
        seen["page"] = run["provenance"]["status"]
        return render(self, run)

    monkeypatch.setattr(HtmlReporter, "render", spy)
    assert run(tmp_path / "a") == 0
    assert seen == {"file": "running", "page": "ok"}
    assert provenance(tmp_path / "a")["status"] == "ok"


def test_a_reused_out_keeps_user_files(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    (d / "figures").mkdir()
    assert run(d) == 0
    assert run(d) == 0
    assert (d / "notes.txt").read_text() == "mine" and (d / "figures").is_dir()


def test_clean_run_dir_removes_only_what_hemaflow_wrote(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    d = tmp_path / "run"
    d.mkdir()
    listed = ["mil-history.csv", "../outside.txt", str(outside), "", ".."]
    (d / "provenance.json").write_text(json.dumps({"status": "failed", "files": listed}))
    for name in ("error.log", "report.html", "mil-history.csv", "old-export.csv", "notes.txt",
                 ".report.html.tmp-123-abcd", ".notes.txt.tmp-1-2"):
        (d / name).write_text("x")
    removed = clean_run_dir(d)
    assert removed == [".report.html.tmp-123-abcd", "error.log", "mil-history.csv", "provenance.json", "report.html"]
    assert sorted(p.name for p in d.iterdir()) == [".notes.txt.tmp-1-2", "notes.txt", "old-export.csv"]
    assert outside.read_text() == "keep"


def test_clean_run_dir_leaves_a_folder_that_holds_no_run(tmp_path):
    (tmp_path / "report.html").write_text("a user's page")
    (tmp_path / "error.log").write_text("a user's log")
    assert clean_run_dir(tmp_path) == []
    assert (tmp_path / "error.log").exists()


def test_damaged_provenance_still_cleans_the_known_files(tmp_path):
    (tmp_path / "provenance.json").write_text("{not json")
    (tmp_path / "error.log").write_text("old")
    assert clean_run_dir(tmp_path) == ["error.log", "provenance.json"]


def test_a_bug_while_writing_outputs_still_says_failed(tmp_path, monkeypatch, capsys):
    from hemaflow.core import runner

    def broken(steps):
        raise KeyError("a bug")

    monkeypatch.setattr(runner, "merge_metrics", broken)
    assert run(tmp_path / "a") == 3
    assert "internal error" in capsys.readouterr().err
    prov = provenance(tmp_path / "a")
    assert prov["status"] == "failed" and "a bug" in prov["error"]
