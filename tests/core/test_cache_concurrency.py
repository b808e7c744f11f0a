"""Concurrent runs sharing a cache: a lock per key, so a step is computed once (issue 15)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from hemaflow.core.cache import StepCache
from tests.core.cache_fixtures import RECIPES, golden, provenance  # noqa: F401


def start_run(cache: Path, out: Path, *args: str, **env: str) -> tuple[subprocess.Popen, list[str]]:
    """``hemaflow run tiny.yaml`` in a subprocess; its output lines are collected as they come."""
    proc = subprocess.Popen([sys.executable, "-m", "hemaflow", "run", str(RECIPES / "tiny.yaml"), "--out", str(out),
                             *args], env=dict(os.environ, HEMAFLOW_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1", **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    return proc, lines


def wait_for(lines: list[str], text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not any(text in line for line in lines):
        assert proc.poll() is None, "".join(lines)
        assert time.time() < deadline, "".join(lines)
        time.sleep(0.05)


def keys(golden: Path) -> dict[str, str]:
    return {s["id"]: s["cache_key"] for s in provenance(golden / "run")["steps"]}


def test_a_run_waits_for_a_step_being_computed_then_uses_that_entry(golden, tmp_path):
    cache = StepCache(tmp_path / "cache")
    data_key = keys(golden)["data"]
    with cache.lock(data_key):  # "another run" is computing the data step
        proc, lines = start_run(cache.root, tmp_path / "run")
        wait_for(lines, f"data: waiting for pid {os.getpid()}", proc)
        time.sleep(0.5)
        assert proc.poll() is None  # it waits instead of computing
        # the other run commits its entry (as the cache does: rename of a finished folder)
        work = cache.new_workdir(data_key)
        shutil.rmtree(work)
        shutil.copytree(StepCache(golden / "cache").entry(data_key), work)
        cache.entry(data_key).parent.mkdir(parents=True, exist_ok=True)
        os.rename(work, cache.entry(data_key))
    assert proc.wait(timeout=300) == 0, "".join(lines)
    hits = {s["id"]: s["cache_hit"] for s in provenance(tmp_path / "run")["steps"]}
    assert hits == {"data": True, "segment": False, "evaluate": False}
    assert (tmp_path / "run" / "metrics.json").read_text() == (golden / "run" / "metrics.json").read_text()


def test_after_the_lock_timeout_the_step_is_computed_anyway(golden, tmp_path):
    cache = StepCache(tmp_path / "cache")
    with cache.lock(keys(golden)["data"]):
        proc, lines = start_run(cache.root, tmp_path / "run", HEMAFLOW_CACHE_LOCK_TIMEOUT="1")
        assert proc.wait(timeout=300) == 0, "".join(lines)
    assert any("still locked after the lock timeout; computing it here too" in line for line in lines)
    assert not provenance(tmp_path / "run")["steps"][0]["cache_hit"]


def test_the_lock_of_a_killed_run_is_free_at_once(tmp_path):
    key = "ab" * 32
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom hemaflow.core.cache import StepCache\n"
                               "with StepCache(sys.argv[1]).lock(sys.argv[2]):\n    print('held', flush=True)\n"
                               "    time.sleep(120)", str(tmp_path), key], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    cache = StepCache(tmp_path)
    assert cache.is_locked(key)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    t0 = time.perf_counter()
    with cache.lock(key, timeout=30) as locked:
        assert locked
    assert time.perf_counter() - t0 < 5
    assert not cache.is_locked(key)


def test_two_concurrent_identical_runs_compute_each_step_once(tmp_path):
    cache = tmp_path / "cache"
    bigger = ("--set", "steps.data.with.image_size=160")  # steps long enough to overlap
    runs = [start_run(cache, tmp_path / f"run{i}", *bigger) for i in range(2)]
    for proc, lines in runs:
        assert proc.wait(timeout=300) == 0, "".join(lines)
    steps = [{s["id"]: s for s in provenance(tmp_path / f"run{i}")["steps"]} for i in range(2)]
    for sid in ("data", "segment", "evaluate"):
        computed = [not s[sid]["cache_hit"] for s in steps]
        assert sum(computed) == 1, (sid, computed, [lines for _, lines in runs])
        assert steps[0][sid]["cache_key"] == steps[1][sid]["cache_key"]
    assert len(list((cache / "steps").glob("*/*/step.json"))) == 3
    assert not list((cache / "tmp").iterdir())
    a, b = (json.loads((tmp_path / f"run{i}" / "metrics.json").read_text()) for i in range(2))
    assert a == b and a["segmentation"]["n"] == 5
