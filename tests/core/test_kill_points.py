"""SIGKILL at any point of a run, then a rerun: identical metrics (issue 15 item 7, Target).

A small wrapper runs ``hemaflow run`` in a subprocess with one hook that sends the process a
real SIGKILL at a chosen point: before the k-th step is committed to the cache (k = 0, 1, 2
finished steps), inside the commit (the entry's ``step.json`` written, the rename into
``steps/`` not done), and while the run directory's files are replaced (``metrics.json``,
``report.html``, the final ``provenance.json``: the temporary file is complete, the rename is
not done), and while the ``processes`` executor's workers run (they must end with their run,
not wait on its task queue forever). After each kill the run directory says the run did not finish, the cache holds only
sound entries (``hemaflow cache verify`` exits 0), a rerun into the same ``--out`` reuses every
committed step, cleans the leftovers, and gives exactly the metrics of an uninterrupted run in
another cache.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hemaflow.core.cli import main

RECIPE = Path(__file__).parent / "recipes" / "tiny.yaml"
STEPS = ["data", "segment", "evaluate"]

# Runs the CLI with a SIGKILL hook. HEMAFLOW_TEST_KILL_AT is "commit:N" (kill when StepCache.commit
# is called the N-th time, before it runs), "rename:N" (kill at the N-th rename of a work folder
# into steps/, after step.json is written) or "replace:NAME[:AFTER]" (kill when a finished
# temporary file is about to replace NAME in the run directory, the first time after AFTER was
# replaced there, if given) or "pool" (kill while the processes executor's workers run; their
# pids go to the file HEMAFLOW_TEST_PIDS).
WRAPPER = r"""
import os, signal, sys
from pathlib import Path

how, _, arg = os.environ["HEMAFLOW_TEST_KILL_AT"].partition(":")
calls = {"n": 0}
seen = set()

def die():
    sys.stdout.flush(); sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)

if how == "commit":
    from hemaflow.core.cache import StepCache
    real_commit = StepCache.commit
    def commit(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == int(arg):
            die()
        return real_commit(self, *a, **k)
    StepCache.commit = commit
elif how == "rename":
    real_rename = os.rename
    def rename(src, dst, *a, **k):
        if Path(src).parent.name == "tmp" and Path(dst).parent.parent.name == "steps":
            calls["n"] += 1
            if calls["n"] == int(arg):
                assert (Path(src) / "step.json").is_file()
                die()
        return real_rename(src, dst, *a, **k)
    os.rename = rename
elif how == "replace":
    name, _, after = arg.partition(":")
    run_dir = Path(sys.argv[sys.argv.index("--out") + 1]).resolve()
    real_replace = os.replace
    def replace(src, dst, *a, **k):
        dst_name = Path(dst).name
        if Path(dst).parent.resolve() != run_dir:  # a step's own files (its metrics.json...) in the cache
            pass
        elif dst_name == name and (not after or after in seen):
            assert Path(src).stat().st_size > 0
            die()
        else:
            seen.add(dst_name)
        return real_replace(src, dst, *a, **k)
    os.replace = replace
elif how == "pool":
    from concurrent.futures import ProcessPoolExecutor
    real_map = ProcessPoolExecutor.map
    def pool_map(self, *a, **k):
        results = real_map(self, *a, **k)  # every worker started, tasks queued
        Path(os.environ["HEMAFLOW_TEST_PIDS"]).write_text(" ".join(map(str, self._processes)))
        die()
    ProcessPoolExecutor.map = pool_map
else:
    raise SystemExit(f"unknown kill point {how!r}")

from hemaflow.core.cli import main
sys.exit(main(sys.argv[1:]))
"""

# point -> (hook, steps committed before the kill, files of the run directory written before it)
POINTS = {
    "before-the-first-step-finishes": ("commit:1", 0, set()),
    "after-1-cached-step": ("commit:2", 1, set()),
    "after-2-cached-steps": ("commit:3", 2, set()),
    "inside-the-commit-of-step-2": ("rename:2", 1, set()),
    "writing-metrics": ("replace:metrics.json", 3, set()),
    "writing-the-report": ("replace:report.html", 3, {"metrics.json", "predictions.csv"}),
    "writing-the-final-provenance": ("replace:provenance.json:report.html", 3,
                                     {"metrics.json", "predictions.csv", "report.html"}),
    "while-worker-processes-run": ("pool", 0, set()),
}


def provenance(run_dir: Path) -> dict:
    return json.loads((run_dir / "provenance.json").read_text())


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cached_steps(cache: Path) -> int:
    return sum(1 for e in (cache / "steps").glob("*/*") if (e / "step.json").is_file())


@pytest.fixture(scope="module")
def clean_metrics(tmp_path_factory) -> dict:
    """metrics.json of an uninterrupted run in its own cache."""
    root = tmp_path_factory.mktemp("clean")
    mp = pytest.MonkeyPatch()
    mp.setenv("HEMAFLOW_CACHE_DIR", str(root / "cache"))
    try:
        assert main(["run", str(RECIPE), "--out", str(root / "run")]) == 0
    finally:
        mp.undo()
    return json.loads((root / "run" / "metrics.json").read_text())


@pytest.mark.parametrize("point", list(POINTS), ids=list(POINTS))
def test_sigkill_then_rerun_gives_identical_metrics(point, clean_metrics, tmp_path, monkeypatch, capsys):
    kill_at, committed, written = POINTS[point]
    cache, out = tmp_path / "cache", tmp_path / "out"
    pids = tmp_path / "pids"
    env = dict(os.environ, HEMAFLOW_CACHE_DIR=str(cache), HEMAFLOW_TEST_KILL_AT=kill_at, HEMAFLOW_TEST_PIDS=str(pids))
    pool = ["--set", "executor={uses: processes, with: {workers: 2}}"] if kill_at == "pool" else []
    log = tmp_path / "killed.log"
    with log.open("w") as fh:  # a file, not a pipe: a leftover worker holding a pipe would stall the test
        proc = subprocess.run([sys.executable, "-c", WRAPPER, "run", str(RECIPE), "--out", str(out), *pool],
                              env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=300)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, log.read_text()[-2000:])
    if kill_at == "pool":  # the killed run's workers do not wait on its task queue forever
        workers = [int(p) for p in pids.read_text().split()]
        assert len(workers) == 2
        t0 = time.time()
        while any(alive(p) for p in workers) and time.time() - t0 < 20:
            time.sleep(0.1)
        left = [p for p in workers if alive(p)]
        for p in left:  # never leave them behind, even when the test fails
            os.kill(p, signal.SIGKILL)
        assert not left, "the killed run's worker processes are still running"

    # the killed run directory says the run did not finish
    prov = provenance(out)
    assert prov["status"] == "running" and prov["error"] is None
    assert [s["id"] for s in prov["steps"]] in ([], STEPS)
    present = {n for n in ("metrics.json", "predictions.csv", "report.html") if (out / n).is_file()}
    assert present == written
    # only whole entries in steps/; the hemaflow cache's own check agrees
    assert cached_steps(cache) == committed
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(cache))
    capsys.readouterr()
    assert main(["cache", "verify"]) == 0, capsys.readouterr()

    # a rerun into the same --out: resumes, cleans what the killed run left, same metrics
    assert main(["run", str(RECIPE), "--out", str(out)]) == 0
    prov = provenance(out)
    assert prov["status"] == "ok"
    assert [s["cache_hit"] for s in prov["steps"]] == [i < committed for i in range(len(STEPS))]
    assert json.loads((out / "metrics.json").read_text()) == clean_metrics
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temp file left
    assert list((cache / "tmp").iterdir()) == []  # the killed run's work folder is cleaned
    capsys.readouterr()
    assert main(["cache", "verify"]) == 0, capsys.readouterr()
    assert cached_steps(cache) == len(STEPS)
