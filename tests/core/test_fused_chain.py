"""Fused per-image chains (hemaflow.core.chain): same keys and bytes as the unfused path,
partial cache hits, on_error skip propagation, the HEMAFLOW_FUSE switch, provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hemaflow.core.artifacts import Artifact
from hemaflow.core.chain import PerItem
from hemaflow.core.component import Component
from hemaflow.core.plugins import Entry, build_registry, make_plugin_manager
from hemaflow.core.recipe import load_recipe
from hemaflow.core.runner import Runner
from hemaflow.core.validate import resolve

CALLS: list[str] = []  # run_item calls in this process (serial executor)


class Arrays(Artifact):
    """A folder of one .npy per item; meta ``names`` lists them in order."""

    type_name = "TestArrays"

    def load_items(self) -> list[tuple[str, np.ndarray]]:
        return [(n, np.load(self.path / f"{n}.npy")) for n in self.meta["names"]]


def write_arrays(ctx: Any, results: list[Any], name: str = "arrays") -> Arrays:
    out = ctx.out_dir(name)
    kept = [r for r in results if r is not None]
    for n, arr in kept:
        np.save(out / f"{n}.npy", arr)
    return Arrays(out, {"names": [n for n, _ in kept]}).save()


class Source(Component):
    kind, name = "dataset", "t_source"
    schema = {"type": "object", "properties": {"n": {"type": "integer", "default": 5}},
              "additionalProperties": False}
    outputs = {"images": "TestArrays"}

    def run(self, ctx, **_):
        rng = np.random.default_rng(0)
        return {"images": write_arrays(ctx, [(f"im{i}", rng.random((8, 8))) for i in range(self.params["n"])])}


class Scale(PerItem, Component):
    kind, name = "normalizer", "t_scale"
    schema = {"type": "object", "properties": {"factor": {"type": "number", "default": 2.0}},
              "additionalProperties": False}
    inputs = {"images": "TestArrays"}
    outputs = {"images": "TestArrays"}

    def items(self, ctx, images):
        return images.load_items()

    def run_item(self, item):
        CALLS.append(self.name)
        n, arr = item
        return n, arr * self.params["factor"]

    def assemble(self, ctx, results, images):
        return {"images": write_arrays(ctx, results)}


class Threshold(PerItem, Component):
    """Masks; on_error skip: an image whose mean is above ``skip_above`` is skipped (a warning)."""

    kind, name = "segmenter", "t_threshold"
    schema = {"type": "object", "properties": {"skip_above": {"type": "number", "default": 99.0}},
              "additionalProperties": False}
    inputs = {"images": "TestArrays"}
    outputs = {"masks": "TestArrays"}

    def items(self, ctx, images):
        return images.load_items()

    def run_item(self, item):
        CALLS.append(self.name)
        n, arr = item
        if arr.mean() > self.params["skip_above"]:
            return None
        return n, (arr > arr.mean()).astype(np.uint8)

    def assemble(self, ctx, results, images):
        names = [n for n, _ in images.load_items()]
        for n, r in zip(names, results):
            if r is None:
                ctx.warn(f"{n}: skipped")
        return {"masks": write_arrays(ctx, results)}


class Count(PerItem, Component):
    kind, name = "cells", "t_count"
    inputs = {"images": "TestArrays"}
    outputs = {"counts": "TestArrays"}

    def items(self, ctx, images):
        return images.load_items()

    def run_item(self, item):
        CALLS.append(self.name)
        n, arr = item
        return n, np.array([arr.sum()])

    def assemble(self, ctx, results, images):
        return {"counts": write_arrays(ctx, results)}


def registry():
    reg = build_registry(make_plugin_manager(entry_points=False))
    reg.artifact_types["TestArrays"] = Arrays
    for cls in (Source, Scale, Threshold, Count):
        reg.components[cls.kind][cls.name] = Entry(cls, "tests", "tests", "0")
    return reg


RECIPE = """name: fused
seed: 0
executor: {{uses: {executor}}}
steps:
  data: {{uses: t_source, with: {{n: 5}}}}
  norm: {{uses: t_scale, inputs: {{images: data}}, with: {{factor: {factor}}}}}
  seg: {{uses: t_threshold, inputs: {{images: norm}}, with: {{skip_above: {skip}}}}}
  cells: {{uses: t_count, inputs: {{images: seg}}}}
"""


def run(tmp: Path, cache: Path, name: str, *, fuse: bool, executor: str = "serial", factor: float = 2.0,
        skip: float = 99.0):
    path = tmp / f"{name}.yaml"
    path.write_text(RECIPE.format(executor=executor, factor=factor, skip=skip))
    r = Runner(resolve(load_recipe(path), registry()), registry(), cache_dir=cache, fuse=fuse)
    out = r.run(tmp / name)
    return out, json.loads((tmp / name / "provenance.json").read_text())


def artifact_bytes(res) -> dict[str, bytes]:
    files = {}
    for name, art in res.outputs.items():
        for f in sorted(art.path.rglob("*")):
            if f.is_file():
                files[f"{name}/{f.relative_to(art.path)}"] = f.read_bytes()
    return files


def manifest(res) -> Any:
    return json.loads((res.entry / "step.json").read_text())["manifest"]


@pytest.mark.parametrize("executor", ["serial", "processes"])
def test_fused_equals_unfused_keys_and_bytes(tmp_path, executor):
    plain, p_prov = run(tmp_path, tmp_path / "c1", "plain", fuse=False, executor=executor)
    fused, f_prov = run(tmp_path, tmp_path / "c2", "fused", fuse=True, executor=executor)
    assert [s.key for s in plain.steps] == [s.key for s in fused.steps]
    for a, b in zip(plain.steps, fused.steps):
        assert artifact_bytes(a) == artifact_bytes(b), a.id
        assert manifest(a) == manifest(b), a.id
    assert len(artifact_bytes(fused.steps[-1])) == 6  # meta.json + 5 counts
    assert [s.get("fused") for s in f_prov["steps"]] == [None, ["norm", "seg", "cells"], ["norm", "seg", "cells"],
                                                         ["norm", "seg", "cells"]]
    assert all("fused" not in s for s in p_prov["steps"])


def test_fused_run_fills_the_cache_the_unfused_run_reads(tmp_path):
    run(tmp_path, tmp_path / "c", "a", fuse=True)
    _, prov = run(tmp_path, tmp_path / "c", "b", fuse=False)
    assert [s["cache_hit"] for s in prov["steps"]] == [True, True, True, True]


def test_partly_cached_chain_fuses_the_rest(tmp_path):
    cache = tmp_path / "c"
    run(tmp_path, cache, "a", fuse=True)
    CALLS.clear()
    out, prov = run(tmp_path, cache, "b", fuse=True, skip=98.0)  # norm cached; seg and cells new
    assert [s["cache_hit"] for s in prov["steps"]] == [True, True, False, False]
    assert [s.get("fused") for s in prov["steps"]][2:] == [["seg", "cells"], ["seg", "cells"]]
    assert CALLS == ["t_threshold", "t_count"] * 5  # each image once through seg then cells, norm not rerun
    ref, _ = run(tmp_path, tmp_path / "c2", "ref", fuse=False, skip=98.0)
    assert [s.key for s in ref.steps] == [s.key for s in out.steps]
    assert [artifact_bytes(s) for s in ref.steps] == [artifact_bytes(s) for s in out.steps]


def test_skip_propagates_downstream(tmp_path):
    # factor 2 on U(0,1): image means ~1.0; skip_above 1.0 skips some, and they are missing downstream
    fused, prov = run(tmp_path, tmp_path / "c1", "f", fuse=True, skip=1.0)
    plain, _ = run(tmp_path, tmp_path / "c2", "p", fuse=False, skip=1.0)
    seg, cells = fused.steps[2], fused.steps[3]
    kept = seg.outputs["masks"].meta["names"]
    assert 0 < len(kept) < 5, kept
    assert cells.outputs["counts"].meta["names"] == kept
    assert len(seg.warnings) == 5 - len(kept) and all("skipped" in w for w in seg.warnings)
    assert seg.warnings == plain.steps[2].warnings
    assert [artifact_bytes(s) for s in plain.steps] == [artifact_bytes(s) for s in fused.steps]


def test_env_switch_turns_fusion_off(tmp_path, monkeypatch):
    monkeypatch.setenv("HEMAFLOW_FUSE", "0")
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(executor="serial", factor=2.0, skip=99.0))
    r = Runner(resolve(load_recipe(path), registry()), registry(), cache_dir=tmp_path / "c")
    assert r.fuse is False
    out = r.run(tmp_path / "run")
    assert all(not getattr(s, "fused", None) for s in out.steps)


def test_a_failing_item_names_its_step(tmp_path, monkeypatch):
    from hemaflow.core.errors import StepError

    def boom(self, item):
        raise ValueError("bad pixels")

    monkeypatch.setattr(Threshold, "run_item", boom)
    with pytest.raises(StepError, match="bad pixels") as info:
        run(tmp_path, tmp_path / "c", "x", fuse=True)
    assert "seg" in str(info.value)
    # nothing of the failed chain is committed: a rerun computes it
    monkeypatch.undo()
    _, prov = run(tmp_path, tmp_path / "c", "y", fuse=True)
    assert [s["cache_hit"] for s in prov["steps"]] == [True, False, False, False]


_count_item = Count.run_item


def slow_count_item(self, item):
    """Count.run_item that waits on the 3rd image when T_FUSED_HANG is set (to kill the run there)."""
    import os
    import time

    if item[0] == "im2" and os.environ.get("T_FUSED_HANG"):
        Path(os.environ["T_FUSED_HANG"]).write_text("hanging")
        time.sleep(60)
    return _count_item(self, item)


KILL_SCRIPT = """
import sys
from pathlib import Path
import tests.core.test_fused_chain as t
t.Count.run_item = t.slow_count_item
t.run(Path(sys.argv[1]), Path(sys.argv[2]), "killed", fuse=True)
"""


def test_resume_after_a_killed_fused_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    flag = tmp_path / "hanging"
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, T_FUSED_HANG=str(flag), PYTHONPATH=str(root))
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(tmp_path), str(tmp_path / "c")], env=env,
                            cwd=root, start_new_session=True)
    try:
        deadline = time.time() + 60
        while not flag.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert flag.exists(), "the fused run never reached the chain"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    out, prov = run(tmp_path, tmp_path / "c", "resumed", fuse=True)
    assert [s["cache_hit"] for s in prov["steps"]] == [True, False, False, False]
    ref, _ = run(tmp_path, tmp_path / "c2", "ref", fuse=False)
    assert [s.key for s in ref.steps] == [s.key for s in out.steps]
    assert [artifact_bytes(s) for s in ref.steps] == [artifact_bytes(s) for s in out.steps]
