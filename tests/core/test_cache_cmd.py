"""``hemaflow cache ls|verify|prune|clear`` and the cleaning of orphan work folders (issue 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hemaflow.core.cache import StepCache, _host_tag
from hemaflow.core.cli import main
from tests.core.cache_fixtures import cache, entry_of, golden, provenance, rerun  # noqa: F401


def n_entries(cache: Path) -> int:
    return len(list((cache / "steps").glob("*/*")))


def test_ls_lists_every_entry(cache, capsys):
    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["KEY", "STEP", "COMPONENT", "SIZE", "FINISHED", "(UTC)", "LAST", "USED",
                                           "(UTC)"]
    for step, comp in (("data", "synthetic_smears"), ("segment", "classical"), ("evaluate", "segmentation")):
        assert any(line.split()[1:3] == [step, comp] for line in out.splitlines()[1:])
    assert "3 entries" in out and str(cache) in out
    assert main(["cache", "ls", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted(r["step"] for r in rows) == ["data", "evaluate", "segment"]
    assert all(len(r["key"]) == 64 and r["size"] > 0 and r["finished"] for r in rows)


def test_ls_of_an_empty_or_missing_cache(tmp_path, capsys):
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "nothing")]) == 0
    assert "no cache entries in" in capsys.readouterr().out
    (tmp_path / "file").write_text("x")
    assert main(["cache", "ls", "--cache-dir", str(tmp_path / "file")]) == 2
    assert "the cache directory is not a folder" in capsys.readouterr().err


def test_cache_dir_option_wins_over_the_environment(cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "other"))
    assert main(["cache", "ls", "--cache-dir", str(cache)]) == 0
    assert "3 entries" in capsys.readouterr().out


def test_verify_finds_damage_and_fix_removes_it(cache, tmp_path, capsys):
    assert main(["cache", "verify"]) == 0
    assert "checked 3 entries" in capsys.readouterr().out
    metrics = entry_of(cache, "evaluate") / "metrics" / "metrics.json"
    text = metrics.read_text()
    metrics.write_text(text.replace('"dice": 0.', '"dice": 1.', 1))  # same size: only a hash sees it
    assert main(["cache", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"{metrics.parent.parent}: metrics/metrics.json: content changed" in out
    assert "1 damaged; `hemaflow cache verify --fix` removes them" in out
    assert n_entries(cache) == 3
    assert main(["cache", "verify", "--fix"]) == 0
    assert "(removed)" in capsys.readouterr().out
    assert n_entries(cache) == 2
    assert main(["cache", "verify"]) == 0
    code, out_dir = rerun(tmp_path)  # and the step comes back
    assert code == 0 and [s["cache_hit"] for s in provenance(out_dir)["steps"]] == [True, True, False]


def test_verify_reports_a_stray_folder(cache, capsys):
    (cache / "steps" / "zz" / "not-a-key").mkdir(parents=True)
    assert main(["cache", "verify"]) == 1
    assert "not a cache entry" in capsys.readouterr().out


def test_prune_by_age_and_size(cache, capsys):
    old = entry_of(cache, "data")
    two_days = time.time() - 2 * 86400
    os.utime(old, (two_days, two_days))
    assert main(["cache", "prune", "--older-than", "1", "--dry-run"]) == 0
    assert "would remove 1 of 3 entries" in capsys.readouterr().out and old.exists()
    assert main(["cache", "prune", "--older-than", "1"]) == 0
    assert "removed 1 of 3 entries" in capsys.readouterr().out
    assert not old.exists() and n_entries(cache) == 2
    sizes = sorted(r["size"] for r in _ls_json(capsys))
    assert main(["cache", "prune", "--max-size", str(sizes[-1])]) == 0  # room for the biggest one only
    assert n_entries(cache) == 1
    assert main(["cache", "prune", "--max-size", "0"]) == 0
    assert n_entries(cache) == 0


def _ls_json(capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["cache", "ls", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("args", [["--older-than", "x"], ["--older-than", "-1"], ["--max-size", "12Q"]])
def test_prune_usage_errors(args, cache):
    with pytest.raises(SystemExit) as exc:
        main(["cache", "prune", *args])
    assert exc.value.code == 2


def test_clear_needs_yes(cache, capsys):
    assert main(["cache", "clear"]) == 2
    assert "add --yes" in capsys.readouterr().err
    assert n_entries(cache) == 3
    assert main(["cache", "clear", "--yes"]) == 0
    assert "removed 3 entries" in capsys.readouterr().out
    assert n_entries(cache) == 0 and not list((cache / "locks").glob("*"))


# -- orphan work folders ------------------------------------------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def make_tmp(cache: Path, name: str, age_s: float = 0) -> Path:
    path = cache / "tmp" / name
    (path / "masks").mkdir(parents=True)
    (path / "masks" / "x.png").write_bytes(b"half")
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


def test_orphans_are_work_folders_no_live_run_writes(tmp_path):
    cache = tmp_path / "c"
    key = "ab" * 32
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = make_tmp(cache, f"{key}-{dead_pid()}-{_host_tag()}-0123abcd")
        legacy = make_tmp(cache, f"{key[:16]}-{dead_pid()}-89abcdef")  # named by an older hemaflow
        live = make_tmp(cache, f"{key}-{sleeper.pid}-{_host_tag()}-0123abcd")
        live_but_old = make_tmp(cache, f"{'cd' * 32}-{sleeper.pid}-{_host_tag()}-0123abcd", age_s=2 * 86400)
        other_host = make_tmp(cache, f"{key}-{dead_pid()}-ffffffff-0123abcd")  # its pid means nothing here
        other_host_old = make_tmp(cache, f"{key}-1-ffffffff-4567abcd", age_s=2 * 86400)
        stray_old = make_tmp(cache, "something-else", age_s=2 * 86400)  # not hemaflow's: never touched
        c = StepCache(cache)
        assert sorted(c.orphans()) == sorted([dead, legacy, live_but_old, other_host_old])
        # a folder whose key a live run has locked is never an orphan, however old
        with c.lock("cd" * 32):
            held = subprocess.run([sys.executable, "-c", "import sys; from hemaflow.core.cache import StepCache; "
                                   "print(StepCache(sys.argv[1]).is_locked(sys.argv[2]))", str(cache), "cd" * 32],
                                  capture_output=True, text=True)
            assert held.stdout.strip() == "True"
        removed = c.clean_orphans()
        assert sorted(removed) == sorted([dead, legacy, live_but_old, other_host_old])
        assert live.exists() and other_host.exists() and stray_old.exists() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_run_cleans_orphans_when_it_starts(cache, tmp_path):
    dead = make_tmp(cache, f"{'ef' * 32}-{dead_pid()}-{_host_tag()}-0123abcd")
    code, _ = rerun(tmp_path)
    assert code == 0 and not dead.exists()


def test_prune_removes_orphans_and_unused_lock_files(cache, capsys):
    dead = make_tmp(cache, f"{'ef' * 32}-{dead_pid()}-{_host_tag()}-0123abcd")
    c = StepCache(cache)
    with c.lock("ef" * 32):
        pass
    assert c.lock_path("ef" * 32).exists()
    assert main(["cache", "prune"]) == 0
    assert "removed 0 of 3 entries (0 B) and 1 orphan work folder(s)" in capsys.readouterr().out
    assert not dead.exists() and not c.lock_path("ef" * 32).exists()
    assert n_entries(cache) == 3


def test_folders_not_named_like_entries_are_never_removed(cache, capsys):
    stray = cache / "steps" / "zz" / "my-notes"
    stray.mkdir(parents=True)
    (stray / "keep.txt").write_text("mine")
    assert main(["cache", "verify", "--fix"]) == 1
    assert "remove it by hand" in capsys.readouterr().out
    assert main(["cache", "prune", "--max-size", "0"]) == 0
    assert main(["cache", "clear", "--yes"]) == 0  # the entries go, the stray folder stays
    assert "left 1 folder(s)" in capsys.readouterr().out
    assert (stray / "keep.txt").read_text() == "mine" and n_entries(cache) == 1
