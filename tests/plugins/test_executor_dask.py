"""The dask executor: serial's results in item order on a local cluster, a worker that dies is
retried once and then named, and a recipe run with ``--executor dask`` gives serial's cache keys
and artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from hemaflow.core.cli import main  # noqa: E402
from hemaflow.core.errors import WorkerDiedError  # noqa: E402
from hemaflow.plugins.executors import DaskExecutor, SerialExecutor  # noqa: E402

from .test_executors import deadline  # noqa: E402


def square(x: int) -> int:
    return x * x


def square_or_raise(x: int) -> int:
    if x == 3:
        raise ValueError("three is bad")
    return x * x


def die_on(item: tuple[int, str]) -> int:
    """Kill the worker on item 3 always; on item 5 only the first time (a marker file)."""
    x, marker = item
    if x == 3 or (x == 5 and not os.path.exists(marker)):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


@pytest.fixture(scope="module")
def dask_executor():
    """One local cluster of two workers for the map tests (starting one costs seconds)."""
    ex = DaskExecutor(workers=2, chunksize=0, address=None, connect_timeout=30)
    with deadline(60):
        ex.client()
    yield ex
    ex.close()


@pytest.mark.parametrize("chunksize", [0, 1, 3])
def test_dask_gives_serial_results_in_order(dask_executor, chunksize):
    items = list(range(23))
    seen = []
    dask_executor.params["chunksize"] = chunksize
    with deadline(60):
        out = dask_executor.map(square, items, progress=seen.append)
    assert out == SerialExecutor().map(square, items) == [x * x for x in items]
    assert sum(seen) == len(items) and (chunksize != 1 or len(seen) == len(items))


def test_an_exception_in_a_dask_worker_propagates_unchanged(dask_executor):
    dask_executor.params["chunksize"] = 2
    with deadline(60), pytest.raises(ValueError, match="three is bad"):
        dask_executor.map(square_or_raise, range(8))


def test_a_dead_worker_is_retried_once_then_the_item_is_named(dask_executor, tmp_path):
    dask_executor.params["chunksize"] = 4
    marker = str(tmp_path / "died-once")
    # item 5 kills its worker once only: the retry finishes it
    with deadline(60):
        assert dask_executor.map(die_on, [(x, marker) for x in (0, 1, 5, 6)]) == [0, 1, 25, 36]
    assert os.path.exists(marker)
    # item 3 kills every worker that tries it: after the retry the map fails naming it
    with deadline(60), pytest.raises(WorkerDiedError) as exc:
        dask_executor.map(die_on, [(x, marker) for x in range(8)])
    assert exc.value.item == "item 4 of 8 (3)"
    assert str(exc.value).startswith("a worker process died while processing item 4 of 8 (3) (a dask worker died")


def test_an_unreachable_scheduler_is_one_clear_error():
    from hemaflow.core.errors import HemaflowError

    ex = DaskExecutor(address="tcp://127.0.0.1:9", chunksize=0, workers=0, connect_timeout=1)
    with deadline(30), pytest.raises(HemaflowError, match=r"^dask executor: cannot reach the scheduler at tcp://127.0.0.1:9"):
        ex.map(square, range(3))


RECIPE = """\
name: dask_tiny
seed: 0
device: cpu
steps:
  data:
    uses: synthetic_smears
    with: {patients_per_class: 1, images_per_patient: 2, image_size: 64}
  segment:
    uses: classical
    inputs: {images: data}
"""


def _digests(entry_root: Path) -> dict[str, str]:
    return {str(p.relative_to(entry_root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(entry_root.rglob("*.png")) if "_report" not in p.parts}


def test_a_recipe_on_a_local_dask_cluster_matches_serial(tmp_path, monkeypatch):
    """``--executor dask``: a local cluster of one worker per CPU, serial's keys and bytes."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "cache_dask"))
    with deadline(120):
        assert main(["run", str(recipe), "--out", str(tmp_path / "a"), "--executor", "dask"]) == 0
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "cache_serial"))
    with deadline(120):
        assert main(["run", str(recipe), "--out", str(tmp_path / "b"), "--executor", "serial"]) == 0
    a, b = (json.loads((tmp_path / d / "provenance.json").read_text()) for d in "ab")
    assert a["executor"] == "dask" and b["executor"] == "serial"
    assert [s["cache_key"] for s in a["steps"]] == [s["cache_key"] for s in b["steps"]]
    assert not any(s["cache_hit"] for s in a["steps"] + b["steps"])  # both really ran
    key = a["steps"][1]["cache_key"]
    da, db = (_digests(tmp_path / c / "steps" / key[:2] / key) for c in ("cache_dask", "cache_serial"))
    assert len(da) == 10 and da == db  # the masks, byte for byte
