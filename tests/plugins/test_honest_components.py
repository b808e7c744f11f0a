"""Components that say when their result is not what it seems (issue 15 item 6): stain
normalization whose background moved far from white, a majority vote that is mean pooling."""

from __future__ import annotations

import numpy as np
import pytest

from hemaflow.plugins import mil
from hemaflow.plugins.normalize import MacenkoNormalizer, background_flag, background_shift
from hemaflow.testing import make, make_context
from tests.plugins.mil_helpers import kfold_split, synthetic_instances
from tests.plugins.seg_fixtures import BG, field, image_set


def _tinted(seed: int, tint: tuple[int, int, int]) -> np.ndarray:
    img, _ = field(seed=seed)
    img = img.copy()
    img[np.abs(img.astype(int) - np.array(BG)).sum(-1) < 30] = tint
    return img


LAVENDER_PRONE = (230, 232, 250)  # a bluish white background: Macenko turns it lavender
YELLOWISH = (235, 228, 180)  # a yellowish background: Macenko brings it closer to white


def test_background_shift_measures_the_brightest_pixels():
    img = np.full((10, 10, 3), 100, np.uint8)
    img[:, :1] = (233, 234, 247)  # the brightest tenth: the background
    out = img.copy()
    out[:, :1] = (190, 181, 226)  # the lavender of the issue
    b = background_shift(img, out)
    assert b["shift"] == pytest.approx(24.9, abs=0.1)
    assert b["white_after"] > b["white_before"]
    assert background_flag(img, out, 15) == ("background moved away from white by delta E 24.9 "
                                             "(Lab [93.0, 2.0, -6.4] -> [75.8, 12.1, -21.3])")
    assert background_flag(img, out, 30) is None  # below the threshold
    assert background_flag(out, img, 15) is None  # towards white: what a normalizer should do
    assert background_flag(img, img, 0) is None


def test_macenko_background_check_warn_fallback_off(tmp_path):
    ref, _ = field(seed=0)
    images = image_set(tmp_path / "data", [(_tinted(1, LAVENDER_PRONE), None), (_tinted(2, YELLOWISH), None),
                                           (ref, None)])
    reference = str(images.image_path("im2"))
    runs = {}
    for mode in ("off", "warn", "fallback"):
        ctx = make_context(tmp_path / mode)
        out = make(MacenkoNormalizer, reference=reference, background_check=mode).run(ctx, images=images)["images"]
        runs[mode] = (ctx, out)
    off, warn, fallback = (runs[m][1] for m in ("off", "warn", "fallback"))
    # warn: the same pixels as without the check, plus one warning naming the moved image
    for iid in ("im0", "im1"):
        assert np.array_equal(warn.read_image(iid), off.read_image(iid))
    assert not [w for w in runs["off"][0].warnings if "background" in w]
    [w] = [w for w in runs["warn"][0].warnings if "background" in w]
    assert w.startswith(f"1 normalized image(s) whose background moved far from white: {images.image_path('im0')}: "
                        f"background moved away from white by delta E ")
    assert [m["image_id"] for m in warn.meta["background_moved"]] == ["im0"]
    assert list(warn.table["stain_outcome"]) == ["normalized", "normalized", "normalized"]
    # fallback: the moved image is the original, the others exactly as normalized
    assert np.array_equal(fallback.read_image("im0"), images.read_image("im0"))
    assert not np.array_equal(off.read_image("im0"), images.read_image("im0"))
    assert np.array_equal(fallback.read_image("im1"), off.read_image("im1"))
    assert list(fallback.table["stain_outcome"]) == ["passthrough", "normalized", "normalized"]
    assert "(kept the original images: background_check: fallback)" in \
        [w for w in runs["fallback"][0].warnings if "background" in w][0]


@pytest.fixture()
def small_bags(tmp_path):
    feats, cells = synthetic_instances(tmp_path, n_patients=8, cells=(3, 6), dim=4, abnormal_rate=0.3)
    pl = feats.table.groupby("patient_id")["label"].first()
    split = kfold_split(tmp_path, list(pl.index), list(pl.values), k=2)
    return feats, split, int(feats.table.groupby("patient_id").size().max())


def test_majority_vote_warns_when_sub_bags_are_whole_bags(tmp_path, small_bags):
    feats, split, largest = small_bags
    warned = {}
    for size in (largest, 2):
        ctx = make_context(tmp_path / f"s{size}")
        make(mil.MajorityVoteMIL, epochs=1, patience=0, gallery_patients=0, sub_bag_size=size).run(
            ctx, split=split, features=feats)
        warned[size] = [w for w in ctx.warnings if "sub_bag_size" in w]
    assert warned[largest] == [
        f"every bag has at most {largest} instance(s), not more than sub_bag_size {largest}: each sub-bag is the "
        f"whole bag, so majority_vote_mil is exactly mean pooling (mean_mil) here; set sub_bag_size below the bag "
        f"sizes (e.g. {largest // 2}) for a vote"]
    assert warned[2] == []
