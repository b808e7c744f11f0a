"""Cache integrity: local files in the key by content, damaged entries detected and recomputed,
paths in entries confined to the entry (issue 15)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemaflow.core import filehash
from hemaflow.core.cache import STAMPS, StepCache, build_manifest, cache_key, info_hash
from hemaflow.core.cli import main
from hemaflow.core.component import key_params
from hemaflow.core.schema import fill_defaults
from tests.core.cache_fixtures import RECIPES, cache, entry_of, golden, provenance, rerun  # noqa: F401


def forge(entry: Path) -> None:
    """Rewrite the entry's manifest and step.json hash to match its current files (what a careful
    forger, or a buggy writer, would leave): only the checks beyond the hash can catch it."""
    info = json.loads((entry / "step.json").read_text())
    rows, stamps = build_manifest(entry)
    info["manifest"] = rows
    info["sha256"] = info_hash(info)
    (entry / "step.json").write_text(json.dumps(info))
    (entry / STAMPS).write_text(json.dumps(stamps))


# -- tampering -------------------------------------------------------------------------------------
def flip_mask_pixel(cache: Path) -> tuple[str, str]:
    png = entry_of(cache, "segment") / "masks" / "masks" / "000000.png"
    mask = np.array(Image.open(png))
    mask[mask.shape[0] // 2, mask.shape[1] // 2] ^= 1
    Image.fromarray(mask).save(png)
    return "segment", "masks/masks/000000.png"


def invert_mask(cache: Path) -> tuple[str, str]:
    for png in sorted((entry_of(cache, "segment") / "masks" / "masks").glob("*.png")):
        mask = np.array(Image.open(png))
        Image.fromarray((mask == 0).astype(mask.dtype)).save(png)
    return "segment", "masks/masks/"


def edit_metrics(cache: Path) -> tuple[str, str]:
    path = entry_of(cache, "evaluate") / "metrics" / "metrics.json"
    values = json.loads(path.read_text())
    values["segmentation"]["dice"] = 0.99
    path.write_text(json.dumps(values, indent=1))
    return "evaluate", "metrics/metrics.json"


def truncate_parquet(cache: Path) -> tuple[str, str]:
    path = entry_of(cache, "data") / "images" / "table.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return "data", "images/table.parquet has"


def garbage_meta(cache: Path) -> tuple[str, str]:
    (entry_of(cache, "segment") / "masks" / "meta.json").write_text("{not json")
    return "segment", "masks/meta.json"


def garbage_step_json(cache: Path) -> tuple[str, str]:
    (entry_of(cache, "evaluate") / "step.json").write_text("\x00garbage")
    return "evaluate", "step.json is not readable JSON"


def edited_step_json(cache: Path) -> tuple[str, str]:
    path = entry_of(cache, "evaluate") / "step.json"
    info = json.loads(path.read_text())
    info["warnings"] = ["forged"]
    path.write_text(json.dumps(info))
    return "evaluate", "step.json was edited"


def legacy_entry(cache: Path) -> tuple[str, str]:
    path = entry_of(cache, "segment") / "step.json"
    info = json.loads(path.read_text())
    del info["manifest"]
    path.write_text(json.dumps(info))
    return "segment", "no content manifest"


def missing_file(cache: Path) -> tuple[str, str]:
    (entry_of(cache, "segment") / "masks" / "masks" / "000003.png").unlink()
    return "segment", "masks/masks/000003.png is missing"


def extra_file(cache: Path) -> tuple[str, str]:
    (entry_of(cache, "segment") / "masks" / "masks" / "000009.png").write_bytes(b"x")
    return "segment", "000009.png is not part of the entry's manifest"


def symlinked_file(cache: Path) -> tuple[str, str]:
    png = entry_of(cache, "segment") / "masks" / "masks" / "000001.png"
    keep = cache.parent / "elsewhere.png"
    shutil.move(png, keep)
    png.symlink_to(keep)
    return "segment", "000001.png is not a regular file"


def outputs_absolute(cache: Path) -> tuple[str, str]:
    entry = entry_of(cache, "segment")
    (entry / "outputs.json").write_text(json.dumps({"masks": {"type": "MaskSet", "path": "/etc"}}))
    forge(entry)
    return "segment", "'/etc', which leaves the entry"


def outputs_dotdot(cache: Path) -> tuple[str, str]:
    entry = entry_of(cache, "segment")
    (entry / "outputs.json").write_text(json.dumps({"masks": {"type": "MaskSet", "path": "../../../x/masks"}}))
    forge(entry)
    return "segment", "which leaves the entry"


def garbage_outputs_forged(cache: Path) -> tuple[str, str]:
    entry = entry_of(cache, "segment")
    (entry / "outputs.json").write_text("[1, 2")
    forge(entry)
    return "segment", "outputs.json is not readable JSON"


def garbage_parquet_forged(cache: Path) -> tuple[str, str]:
    """Damage that passes every file check (manifest rewritten): loading the output fails."""
    entry = entry_of(cache, "segment")
    (entry / "masks" / "table.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    forge(entry)
    return "segment", "an output does not load"


TAMPERS = [flip_mask_pixel, invert_mask, edit_metrics, truncate_parquet, garbage_meta, garbage_step_json,
           edited_step_json, legacy_entry, missing_file, extra_file, symlinked_file, outputs_absolute,
           outputs_dotdot, garbage_outputs_forged, garbage_parquet_forged]


@pytest.mark.parametrize("tamper", TAMPERS, ids=[t.__name__ for t in TAMPERS])
def test_damaged_entry_is_detected_and_recomputed(tamper, golden, cache, tmp_path, capsys):
    step, expected = tamper(cache)
    code, out = rerun(tmp_path)
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "internal error" not in printed.err
    steps = {s["id"]: s for s in provenance(out)["steps"]}
    assert steps[step]["cache_hit"] is False
    warning = " ".join(steps[step]["warnings"])
    assert "was damaged" in warning and expected in warning, warning
    assert "was damaged" in printed.out and expected in printed.out
    # the others are used as they are; the result is the clean run's
    assert all(s["cache_hit"] for sid, s in steps.items() if sid != step)
    assert (out / "metrics.json").read_text() == (golden / "run" / "metrics.json").read_text()
    # repaired: the next run uses the new entry without a warning, and verify finds nothing
    code, again = rerun(tmp_path, "third")
    assert code == 0
    assert all(s["cache_hit"] and not any("damaged" in w for w in s["warnings"])
               for s in provenance(again)["steps"])
    assert main(["cache", "verify"]) == 0


def test_same_size_edit_with_restored_mtime_is_caught_by_the_cheap_check(cache, tmp_path, capsys):
    code, _ = rerun(tmp_path, "stamps")  # the copy's first lookup hashes and records fresh stamps
    assert code == 0
    path = entry_of(cache, "evaluate") / "metrics" / "metrics.json"
    st = path.stat()
    text = path.read_text()
    i = text.index('"dice": 0.') + len('"dice": 0.')
    digit = "1" if text[i] != "1" else "2"
    with open(path, "r+b") as f:  # in place: same inode, same size
        f.seek(i)
        f.write(digit.encode())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    code, out = rerun(tmp_path)
    assert code == 0
    steps = {s["id"]: s for s in provenance(out)["steps"]}
    assert not steps["evaluate"]["cache_hit"]
    assert "metrics/metrics.json: content changed" in steps["evaluate"]["warnings"][0]


def test_a_clean_rerun_warns_about_nothing(cache, tmp_path):
    code, out = rerun(tmp_path)
    assert code == 0
    assert all(s["cache_hit"] and s["warnings"] == [] for s in provenance(out)["steps"])


def test_entries_carry_a_content_manifest(cache):
    entry = entry_of(cache, "segment")
    info = json.loads((entry / "step.json").read_text())
    assert info["step"] == "segment" and info["component"] == "classical"
    files = {row[0]: row for row in info["manifest"]}
    assert "outputs.json" in files and "masks/table.parquet" in files
    rel, size, sha = files["masks/masks/000000.png"]
    assert size == (entry / rel).stat().st_size and sha == filehash.sha256_stream(entry / rel)
    assert info["sha256"] == info_hash(info)
    assert json.loads((entry / "outputs.json").read_text()) == {"masks": {"type": "MaskSet", "path": "masks"}}


def test_output_refs_stay_inside_the_cache(tmp_path):
    cache = StepCache(tmp_path / "c")
    key = "ab" * 32
    up = cache.entry(key) / "images"
    up.mkdir(parents=True)
    work = cache.new_workdir("cd" * 32)
    (work / "masks").mkdir()
    assert cache.output_ref(work, work / "masks") == {"path": "masks"}
    assert cache.output_ref(work, up) == {"entry": key, "path": "images"}
    with pytest.raises(ValueError, match="outside the step's work directory"):
        cache.output_ref(work, tmp_path)


# -- files in the key by content --------------------------------------------------------------------
def _key(comp) -> str:
    params, files = key_params(comp)
    return cache_key({"params": params, "files": files, "fingerprint": comp.fingerprint()})


def _write_weights(path: Path, seed: int) -> None:
    from safetensors.numpy import save_file

    save_file({"w": np.random.default_rng(seed).standard_normal(64).astype(np.float32)}, str(path))


def _write_png(path: Path, seed: int) -> None:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)


FILE_PARAMS = [
    ("classifier", "image_classifier", ("pretrained",), ".safetensors"),
    ("classifier", "multimodal", ("pretrained",), ".safetensors"),
    ("segmenter", "deeplabv3", ("encoder_weights",), ".safetensors"),
    ("segmenter", "deeplabv3", ("weights",), ".safetensors"),
    ("segmenter", "sam", ("checkpoint",), ".pth"),
    ("normalizer", "macenko", ("reference",), ".png"),
    ("normalizer", "reinhard", ("reference",), ".png"),
    # these hashed their file through fingerprint() before; still by content
    ("features", "embeddings", ("checkpoint",), ".safetensors"),
    ("features", "instance_encoder", ("pretrained",), ".safetensors"),
    ("mil", "gated_attention_mil", ("encoder", "pretrained"), ".safetensors"),
]


@pytest.mark.parametrize("kind,name,param,suffix", FILE_PARAMS, ids=[f"{n}-{'.'.join(p)}" for _, n, p, _ in FILE_PARAMS])
def test_file_parameters_enter_the_key_by_content(registry, tmp_path, kind, name, param, suffix):
    cls = registry.get(kind, name)
    write = _write_png if suffix == ".png" else _write_weights

    def make(path: Path):
        params: dict = {param[-1]: str(path)}
        for p in reversed(param[:-1]):
            params = {p: params}
        return cls(**fill_defaults(cls.schema, params))

    w = tmp_path / f"w{suffix}"
    write(w, 0)
    k1 = _key(make(w))
    assert k1 == _key(make(w))
    st = w.stat()
    write(w, 1)  # other content, same name, same size, and the old mtime put back
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert w.stat().st_size == st.st_size
    assert _key(make(w)) != k1
    if name.endswith("_mil"):
        return  # the MIL components keep the path in their key too (their own cache_params)
    same = tmp_path / "renamed" / f"copy{suffix}"
    same.parent.mkdir()
    write(same, 0)
    assert _key(make(same)) == k1  # the same content under another name: the same step


def test_shipped_segmenter_weights_are_hashed_as_their_file(registry):
    from hemaflow.plugins.segment.learned import shipped_weights

    cls = registry.get("segmenter", "deeplabv3")
    name, path = next(iter(shipped_weights().items()))
    comp = cls(**fill_defaults(cls.schema, {"weights": name}))
    params, files = key_params(comp)
    assert params["weights"] == "<file>" and files == {"/weights": filehash.file_sha256(path)}


def test_components_without_files_keep_their_key(registry):
    cls = registry.get("segmenter", "classical")
    comp = cls(**fill_defaults(cls.schema, {}))
    assert key_params(comp) == (comp.cache_params(), {})


def test_label_file_content_enters_the_data_set_fingerprint(registry, tmp_path):
    root = tmp_path / "data"
    for pid in ("p1", "p2"):
        (root / pid).mkdir(parents=True)
        _write_png(root / pid / "a.png", 0)
    labels = root / "labels.csv"
    labels.write_text("patient,diagnosis\np1,AML\np2,ALL\n")
    cls = registry.get("dataset", "patient_folders")

    def fp() -> str:
        return cls(**fill_defaults(cls.schema, {"root": str(root)})).fingerprint()

    before = fp()
    st = labels.stat()
    labels.write_text("patient,diagnosis\np1,ALL\np2,AML\n")  # swapped labels: same size
    os.utime(labels, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert fp() != before


def _write_field(path: Path, seed: int) -> None:
    from tests.plugins.seg_fixtures import field

    Image.fromarray(field(seed=seed, wbcs=((48, 40 + 20 * seed, 18),))[0]).save(path)


def test_a_new_reference_image_recomputes_the_step(tmp_path, monkeypatch):
    monkeypatch.setenv("HEMAFLOW_CACHE_DIR", str(tmp_path / "cache"))
    ref = tmp_path / "ref.png"
    _write_field(ref, 0)
    recipe = tmp_path / "ref.yaml"
    recipe.write_text(
        "name: ref\nseed: 0\ndevice: cpu\nsteps:\n"
        "  data: {uses: synthetic_smears, with: {patients_per_class: 1, images_per_patient: 1, image_size: 64}}\n"
        f"  normalize: {{uses: reinhard, inputs: {{images: data}}, with: {{reference: {json.dumps(str(ref))}}}}}\n")

    def run(name: str) -> dict:
        assert main(["run", str(recipe), "--out", str(tmp_path / name)]) == 0
        return {s["id"]: s for s in provenance(tmp_path / name)["steps"]}

    first = run("a")
    assert run("b")["normalize"]["cache_hit"] is True
    _write_field(ref, 1)  # overwritten in place with another field
    third = run("c")
    assert third["normalize"]["cache_hit"] is False
    assert third["normalize"]["cache_key"] != first["normalize"]["cache_key"]
    assert third["data"]["cache_hit"] is True


# -- the hash memo ------------------------------------------------------------------------------------
def test_big_files_are_hashed_once_per_machine(tmp_path, monkeypatch):
    calls = []
    real = filehash.sha256_stream
    monkeypatch.setattr(filehash, "sha256_stream", lambda p: calls.append(p) or real(p))
    monkeypatch.setattr(filehash, "_memo", {})
    filehash.attach(tmp_path / "cache")
    try:
        big = tmp_path / "w.bin"
        big.write_bytes(os.urandom(filehash.PERSIST_MIN_BYTES + 1))
        digest = filehash.file_sha256(big)
        assert filehash.file_sha256(big) == digest and len(calls) == 1
        filehash._memo.clear()
        filehash.attach(tmp_path / "cache")  # a new process: only the memo in the cache directory is left
        assert filehash.file_sha256(big) == digest and len(calls) == 1
        assert str(big.resolve()) in json.loads((tmp_path / "cache" / "hashes.json").read_text())
        with open(big, "r+b") as f:  # edited in place
            f.write(b"\0" * 16)
        assert filehash.file_sha256(big) != digest and len(calls) == 2
    finally:
        filehash.attach(None)


# -- what a component may leave in its entry ------------------------------------------------------
def _run_with(registry, tmp_path, run_fn):
    from hemaflow.core.artifacts import Metrics
    from hemaflow.core.component import Component
    from hemaflow.core.plugins import Entry
    from hemaflow.core.recipe import load_recipe
    from hemaflow.core.runner import Runner
    from hemaflow.core.validate import resolve

    class Odd(Component):
        kind = "evaluator"
        name = "odd_outputs"
        outputs = {"metrics": "Metrics"}

        def run(self, ctx):
            return {"metrics": run_fn(ctx, Metrics)}

    registry.components["evaluator"]["odd_outputs"] = Entry(Odd, "tests", "tests", "0")
    recipe = tmp_path / "odd.yaml"
    recipe.write_text("name: odd\nseed: 0\ndevice: cpu\nsteps:\n  odd: {uses: odd_outputs}\n")
    runner = Runner(resolve(load_recipe(recipe), registry), registry, cache_dir=tmp_path / "cache")
    return runner.run(tmp_path / "run")


def test_a_link_among_a_steps_outputs_is_refused(registry, tmp_path):
    from hemaflow.core.errors import StepError

    def run(ctx, Metrics):
        art = Metrics(ctx.out_dir("metrics"), {"values": {"x": {"n": 1}}})
        (art.path / "leak").symlink_to("/etc/hostname")
        return art

    with pytest.raises(StepError, match="'metrics/leak', which is not a regular file .links are not allowed."):
        _run_with(registry, tmp_path, run)
    assert not list((tmp_path / "cache" / "tmp").iterdir())


def test_an_output_outside_the_work_directory_is_refused(registry, tmp_path):
    from hemaflow.core.errors import StepError

    def run(ctx, Metrics):
        return Metrics(tmp_path / "elsewhere", {"values": {}}).save()

    with pytest.raises(StepError, match="output 'metrics': output folder .* is outside the step's work directory"):
        _run_with(registry, tmp_path, run)


def test_a_stamps_refresh_in_flight_is_no_damage(cache, tmp_path):
    # another run replacing .stamps.json atomically leaves its temporary file there for a moment
    entry = entry_of(cache, "segment")
    (entry / f".{STAMPS}.tmp-{os.getpid()}-0123abcd").write_text("{}")
    code, out = rerun(tmp_path)
    assert code == 0 and all(s["cache_hit"] for s in provenance(out)["steps"])


def test_a_damaged_hash_memo_only_costs_a_rehash(tmp_path, monkeypatch):
    monkeypatch.setattr(filehash, "_memo", {})
    (tmp_path / "cache").mkdir()
    big = tmp_path / "w.bin"
    big.write_bytes(os.urandom(filehash.PERSIST_MIN_BYTES))
    real = str(big.resolve())
    for garbage in ("{not json", json.dumps([1, 2]), json.dumps({real: [7, "x"]}), json.dumps({real: [[1], 5]})):
        (tmp_path / "cache" / "hashes.json").write_text(garbage)
        filehash._memo.clear()
        filehash.attach(tmp_path / "cache")
        try:
            assert filehash.file_sha256(big) == filehash.sha256_stream(big)
        finally:
            filehash.attach(None)
