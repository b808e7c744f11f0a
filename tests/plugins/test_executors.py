"""The executors: the process pool gives serial's results in order, and a worker that dies
(SIGKILL, the out-of-memory killer) fails the map with a clear error instead of hanging."""

from __future__ import annotations

import json
import os
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest

from hemaflow.core.cli import main
from hemaflow.core.errors import WorkerDiedError
from hemaflow.plugins.executors import ProcessExecutor, SerialExecutor, describe_item


@contextmanager
def deadline(seconds: int):
    """Fail the test instead of hanging it (the bug this file guards against is a hang)."""
    def _timeout(signum, frame):
        raise AssertionError(f"still running after {seconds} s: the executor hangs")

    old = signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def square(x: int) -> int:
    return x * x


def square_or_die(x: int) -> int:
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def square_or_raise(x: int) -> int:
    if x == 3:
        raise ValueError("three is bad")
    return x * x


@pytest.mark.parametrize("chunksize", [1, 3])
def test_pool_gives_serial_results_in_order(chunksize):
    items = list(range(20))
    seen = []
    with deadline(60):
        pooled = ProcessExecutor(workers=2, chunksize=chunksize).map(square, items, progress=seen.append)
    assert pooled == SerialExecutor().map(square, items) == [x * x for x in items]
    assert seen == [1] * len(items)


def test_pool_with_spawn_gives_serial_results():
    with deadline(120):
        assert ProcessExecutor(workers=2, start_method="spawn").map(square, range(6)) == [x * x for x in range(6)]


def test_a_killed_worker_fails_the_map_within_seconds_naming_the_item():
    items = [0, 1, 2, 3, 4, 5, 6, 7]
    with deadline(60), pytest.raises(WorkerDiedError) as exc:
        ProcessExecutor(workers=2).map(square_or_die, items)
    assert exc.value.item == "item 4 of 8 (3)"
    assert str(exc.value) == ("a worker process died while processing item 4 of 8 (3) (killed by SIGKILL, likely "
                              "out of memory): lower the executor's workers or the image size")


def test_a_killed_worker_with_chunks_still_fails_cleanly():
    with deadline(60), pytest.raises(WorkerDiedError, match=r"item 4 of 10 \(3\) \(killed by SIGKILL"):
        ProcessExecutor(workers=2, chunksize=4).map(square_or_die, range(10))


def test_an_exception_in_a_worker_propagates_unchanged():
    with deadline(60), pytest.raises(ValueError, match="three is bad"):
        ProcessExecutor(workers=2).map(square_or_raise, range(8))


def test_describe_item_names_records_by_their_first_field_or_path():
    assert describe_item(("img_007", "/data/a.png", 3)) == "img_007"
    assert describe_item({"path": Path("/data/b.png"), "x": 1}) == "/data/b.png"
    assert describe_item(list(range(100))) == "0"
    assert describe_item(b"x" * 200).endswith("...") and len(describe_item(b"x" * 200)) == 80


NORMALIZE_RECIPE = """\
name: worker_kill
seed: 0
device: cpu
executor: {uses: processes, with: {workers: 2}}
steps:
  data:
    uses: synthetic_smears
    with: {patients_per_class: 1, images_per_patient: 2, image_size: 64}
  normalize:
    uses: reinhard
    inputs: {images: data}
"""


def _always_die(item):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_fails_the_run_with_exit_3_and_keeps_finished_steps(tmp_path, monkeypatch, capsys):
    from hemaflow.plugins import normalize

    recipe = tmp_path / "r.yaml"
    recipe.write_text(NORMALIZE_RECIPE)
    with monkeypatch.context() as m:
        m.setattr(normalize, "_normalize_one", _always_die)
        with deadline(120):
            code = main(["run", str(recipe), "--out", str(tmp_path / "dead")])
    err = capsys.readouterr().err
    assert code == 3
    assert "Traceback" not in err and "error.log" not in err
    line = err.strip().splitlines()[0]
    assert line.startswith("error: step 'normalize' (reinhard): a worker process died while processing item ")
    assert line.endswith("(killed by SIGKILL, likely out of memory): lower the executor's workers or the image size")
    prov = json.loads((tmp_path / "dead" / "provenance.json").read_text())
    assert prov["status"] == "failed" and "a worker process died" in prov["error"]
    assert not (tmp_path / "dead" / "error.log").exists()
    # the data step finished before the worker died: it stays in the cache
    with deadline(120):
        assert main(["run", str(recipe), "--out", str(tmp_path / "again")]) == 0
    steps = json.loads((tmp_path / "again" / "provenance.json").read_text())["steps"]
    assert [(s["id"], s["cache_hit"]) for s in steps] == [("data", True), ("normalize", False)]


def test_the_executor_does_not_change_cache_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(NORMALIZE_RECIPE)
    with deadline(120):
        assert main(["run", str(recipe), "--out", str(tmp_path / "a")]) == 0
        assert main(["run", str(recipe), "--out", str(tmp_path / "b"), "--executor", "serial"]) == 0
    a, b = (json.loads((tmp_path / d / "provenance.json").read_text())["steps"] for d in "ab")
    assert [s["cache_key"] for s in a] == [s["cache_key"] for s in b]
    assert all(s["cache_hit"] for s in b)


def slow_unless_three(x: int) -> int:
    import time

    if x == 3:
        raise ValueError("three is bad")
    time.sleep(30)
    return x


def test_a_failing_item_stops_the_other_workers_at_once():
    import time

    t0 = time.perf_counter()
    with deadline(60), pytest.raises(ValueError, match="three is bad"):
        ProcessExecutor(workers=2).map(slow_unless_three, [3, 1, 2])
    assert time.perf_counter() - t0 < 20  # item 1 (30 s) is not waited for
