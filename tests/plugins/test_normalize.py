from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hemaflow.core.errors import DataError
from hemaflow.plugins.artifacts import Split
from hemaflow.plugins.normalize import MacenkoNormalizer, ReinhardNormalizer, stain_problem
from hemaflow.testing import check_component, make, make_context
from tests.plugins.seg_fixtures import bccd_image_set, field, image_set


def _torch_direct(kind, ref, img):
    import torch
    import torchstain

    chw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))  # noqa: E731
    norm = torchstain.normalizers.MacenkoNormalizer(backend="torch") if kind == "macenko" \
        else torchstain.normalizers.ReinhardNormalizer(backend="torch")
    norm.fit(chw(ref))
    out = norm.normalize(I=chw(img), stains=False)[0] if kind == "macenko" else norm.normalize(I=chw(img))
    return np.clip(out.numpy(), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("cls", [MacenkoNormalizer, ReinhardNormalizer])
def test_contract(cls, registry):
    check_component(cls)
    assert registry.get("normalizer", cls.name) is cls


@pytest.mark.parametrize("cls", [MacenkoNormalizer, ReinhardNormalizer])
def test_close_to_torchstain_on_real_fields(cls, tmp_path, shared_data):
    images = bccd_image_set(shared_data, tmp_path / "bccd", ids=["BloodImage_00001", "BloodImage_00010"])
    ref = str(images.image_path("BloodImage_00010"))
    out = make(cls, reference=ref).run(make_context(tmp_path / "w"), images=images)["images"]
    assert list(out.table["stain_outcome"]) == ["normalized", "normalized"]
    got = out.read_image("BloodImage_00001")
    want = _torch_direct(cls.name, images.read_image("BloodImage_00010"), images.read_image("BloodImage_00001"))
    assert got.shape == want.shape == (480, 640, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # masks are still found (absolute paths) and the state is recorded
    assert out.read_mask("BloodImage_00001").shape == (480, 640)
    assert out.meta["stain_reference"] == ref and out.meta["stain_outcomes"]["normalized"] == 2


@pytest.mark.parametrize("cls", [MacenkoNormalizer, ReinhardNormalizer])
def test_red_stays_red(cls, tmp_path):
    img, _ = field(size=(96, 128), wbcs=((48, 40, 20),), rbcs=((20, 100, 14), (75, 100, 14)))
    images = image_set(tmp_path / "data", [(img, None)])
    out = make(cls, reference=str(images.image_path("im0"))).run(make_context(tmp_path / "w"), images=images)
    res = out["images"].read_image("im0")
    r, g, b = res[20, 100].astype(int)
    assert r > b + 20 and r > g, (r, g, b)            # red cell: red dominates
    r, g, b = res[48, 40].astype(int)
    assert b > r + 20, (r, g, b)                      # nucleus: blue dominates


def test_stain_problem_detects_hopeless_inputs():
    assert stain_problem(np.zeros((64, 64, 3), np.uint8)) == "black or almost black image"
    assert stain_problem(np.full((64, 64, 3), 120, np.uint8)) == "uniform image (no structure to estimate stains from)"
    white = np.random.default_rng(0).integers(245, 255, (64, 64, 3)).astype(np.uint8)
    assert stain_problem(white).startswith("too few stained pixels (0.00% of the image")
    red_only, _ = field(wbcs=(), rbcs=((30, 30, 20), (60, 90, 25)))
    assert stain_problem(red_only) is not None
    img, _ = field()
    assert stain_problem(img) is None


@pytest.mark.parametrize("on_failure", ["skip", "passthrough", "stop"])
def test_on_failure(on_failure, tmp_path):
    good, _ = field()
    blank = np.random.default_rng(0).integers(245, 255, (96, 128, 3)).astype(np.uint8)
    images = image_set(tmp_path / "data", [(good, None), (blank, None), (np.zeros((40, 40, 3), np.uint8), None)])
    comp = make(MacenkoNormalizer, reference=str(images.image_path("im0")), on_failure=on_failure)
    ctx = make_context(tmp_path / "w")
    if on_failure == "stop":
        with pytest.raises(DataError, match=r"im1.png: stain normalization impossible: too few stained pixels"):
            comp.run(ctx, images=images)
        return
    out = comp.run(ctx, images=images)["images"]
    if on_failure == "skip":
        assert list(out.table["image_id"]) == ["im0"]
        assert [s["reason"] for s in out.meta["skipped"]] == [
            "too few stained pixels (0.00% of the image; blank, over-exposed or background-only)",
            "black or almost black image"]
    else:
        assert list(out.table["stain_outcome"]) == ["normalized", "passthrough", "passthrough"]
        np.testing.assert_array_equal(out.read_image("im1"), blank)
    assert len(ctx.warnings) == 2


def test_reference_chosen_from_training_partition_only(tmp_path):
    fields = [field(seed=i) for i in range(4)]
    # im3 is the odd one out (strong blue cast), and im0/im1 are test/val patients
    fields[3] = (np.clip(fields[3][0].astype(int) + [-40, -10, 30], 0, 255).astype(np.uint8), fields[3][1])
    images = image_set(tmp_path / "data", fields)
    images.table["patient_id"] = ["a", "b", "c", "d"]
    split = Split(tmp_path / "split", pd.DataFrame({"fold": 0, "patient_id": ["a", "b", "c", "d"],
                                                    "partition": ["test", "val", "train", "train"]}),
                  {"kind": "test"}).save()
    out = make(MacenkoNormalizer).run(make_context(tmp_path / "w"), images=images, split=split)["images"]
    assert out.meta["stain_reference"] in {str(images.image_path("im2")), str(images.image_path("im3"))}
    assert out.meta["stain_reference_from"] == "medoid of 2 candidates from training partition of fold 0"


def test_bad_reference(tmp_path):
    images = image_set(tmp_path / "data", [field()])
    with pytest.raises(DataError, match="stain reference image not found"):
        make(MacenkoNormalizer, reference=str(tmp_path / "nope.png")).run(make_context(tmp_path / "w"), images=images)
    from hemaflow.lib import imageio as io
    io.write_png(tmp_path / "white.png", np.full((32, 32, 3), 250, np.uint8))
    with pytest.raises(DataError, match="white.png: cannot be the stain reference: uniform image"):
        make(MacenkoNormalizer, reference=str(tmp_path / "white.png")).run(make_context(tmp_path / "w2"), images=images)


def test_resize(tmp_path):
    images = image_set(tmp_path / "data", [field()])
    out = make(ReinhardNormalizer, resize=[48, 64]).run(make_context(tmp_path / "w"), images=images)["images"]
    assert out.read_image("im0").shape == (48, 64, 3)


def test_resize_keeps_masks_and_truth_aligned(tmp_path):
    img, mask = field(size=(96, 128), wbcs=((48, 40, 18),))
    truth = pd.DataFrame({"image_id": ["im0"], "centroid_y": [48.0], "centroid_x": [40.0], "truth": ["normal"]})
    images = image_set(tmp_path / "data", [(img, mask)], cell_truth=truth)
    out = make(MacenkoNormalizer, resize=[48, 64]).run(make_context(tmp_path / "w"), images=images)["images"]
    m = out.read_mask("im0")
    assert m.shape == (48, 64) and m[24, 20] == 2 and m[0, 0] == 0
    t = out.cell_truth()
    assert (float(t["centroid_y"][0]), float(t["centroid_x"][0])) == (24.0, 20.0)
