"""The default classical segmenter (``algorithm: adaptive``): no colour floors, lobes as one cell,
cytoplasm from the image's own colours, the centre cell of a crop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from hemaflow.plugins.segment.adaptive import adaptive_mask
from hemaflow.plugins.segment.classical import ClassicalSegmenter, classical_mask
from hemaflow.testing import make, make_context
from tests.plugins.seg_fixtures import dice, disc, field, image_set


def _dim(img: np.ndarray, keep: float) -> np.ndarray:
    """A pale stain: blend every colour toward the field's background by 1 - keep."""
    bg = np.median(img.reshape(-1, 3), axis=0)
    return np.clip(bg + keep * (img.astype(np.float32) - bg), 0, 255).astype(np.uint8)


def test_finds_nucleus_and_cytoplasm_not_red_cells():
    img, truth = field()
    m = adaptive_mask(img)
    assert dice(m == 2, truth == 2) > 0.9
    assert dice(m > 0, truth > 0) > 0.9
    assert m[20, 100] == 0 and m[75, 100] == 0  # red cells stay background


def test_dim_stain_is_found_without_tuning():
    img, truth = field()
    pale = _dim(img, 0.35)
    # the fixed floor of the older algorithm loses this cell entirely (B - R of the nucleus ~ 0.08)
    assert (classical_mask(pale) == 2).sum() == 0
    m = adaptive_mask(pale)
    assert dice(m == 2, truth == 2) > 0.85
    assert dice(m > 0, truth > 0) > 0.85


def test_yellowish_rapid_stain_with_nucleus_bluer_than_red_only_slightly():
    # Tecom-like colours: yellow background, nucleus with B - R about 0 (the floor's failure case)
    size = (100, 100)
    img = np.empty(size + (3,), np.float32)
    img[:] = (250, 240, 160)
    c, n = disc(size, 50, 50, 32), disc(size, 50, 50, 18)
    img[c] = (205, 175, 150)
    img[n] = (110, 60, 112)
    img += np.random.default_rng(1).normal(0, 3, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    m = adaptive_mask(img, single_cell=True)
    assert dice(m == 2, n) > 0.9
    assert dice(m > 0, c) > 0.9


def test_lobes_of_one_nucleus_are_one_cell():
    size = (110, 110)
    img = np.empty(size + (3,), np.float32)
    img[:] = (228, 226, 214)
    cell = disc(size, 55, 55, 34)
    img[cell] = (214, 180, 200)  # pink granular neutrophil cytoplasm
    lobes = disc(size, 45, 40, 9) | disc(size, 42, 66, 9) | disc(size, 68, 55, 9)
    img[lobes] = (92, 52, 158)
    img += np.random.default_rng(2).normal(0, 4, img.shape)
    m = adaptive_mask(np.clip(img, 0, 255).astype(np.uint8))
    _, n_cells = ndi.label(m > 0)
    _, n_lobes = ndi.label(m == 2)
    assert n_lobes == 3 and n_cells == 1
    assert dice(m > 0, cell) > 0.9


def test_single_cell_keeps_the_centre_cell_only():
    img, truth = field(size=(100, 100), wbcs=((50, 50, 20), (8, 92, 16)), rbcs=())
    both = adaptive_mask(img)
    assert both[8, 92] > 0 and both[50, 50] == 2
    centre = adaptive_mask(img, single_cell=True)
    assert centre[8, 92] == 0 and centre[50, 50] == 2
    assert dice(centre > 0, disc((100, 100), 50, 50, 20)) > 0.9


@pytest.mark.parametrize("img", [np.full((64, 64, 3), 230, np.uint8), np.zeros((32, 32, 3), np.uint8),
                                 field(wbcs=())[0]], ids=["blank", "black", "red_cells_only"])
def test_fields_without_a_white_cell_stay_empty(img):
    assert adaptive_mask(img).max() == 0


def test_component_default_is_adaptive_and_threshold_is_kept(tmp_path):
    pale, truth = field()
    images = image_set(tmp_path / "data", [(_dim(pale, 0.35), truth)])
    new = make(ClassicalSegmenter).run(make_context(tmp_path / "a"), images=images)["masks"]
    old = make(ClassicalSegmenter, algorithm="threshold").run(make_context(tmp_path / "b"), images=images)["masks"]
    assert dice(new.read_mask("im0") == 2, truth == 2) > 0.85
    assert old.read_mask("im0").max() == 0


def test_real_crops_of_both_wbc_sources(shared_data):
    """A few real crops of each wbc-crops source: the centre cell's Dice with default settings."""
    from hemaflow.lib import imageio as io

    spec = {"mode": "values", "cytoplasm": [128], "nucleus": [255]}
    for source, ids in (("tecom", ("001", "002", "003", "004")), ("cellavision", ("001", "002", "003", "004"))):
        scores = []
        for i in ids:
            base = shared_data / "wbc-crops" / source / i
            img, truth = io.read_image(f"{base}.bmp"), io.read_mask(f"{base}.png", spec)
            m = adaptive_mask(img, single_cell=True)
            scores.append(dice(m > 0, truth > 0))
        assert np.mean(scores) > 0.85, (source, scores)


def test_convex_hull_fills_cytoplasm_as_pale_as_the_background():
    # a round cell whose cytoplasm is background-coloured in three wedges (pale granular cytoplasm):
    # the colour model frays the outline there; the default convex hull restores the round cell
    size = (120, 120)
    img = np.empty(size + (3,), np.float32)
    img[:] = (235, 225, 215)
    truth = disc(size, 60, 60, 36)
    img[truth] = (200, 165, 200)
    yy, xx = np.mgrid[:120, :120]
    ang = np.degrees(np.arctan2(yy - 60, xx - 60)) % 120
    rad = np.hypot(yy - 60, xx - 60)
    img[truth & (ang < 25) & (rad > 26)] = (235, 225, 215)
    img[disc(size, 60, 60, 18)] = (90, 50, 140)
    img = np.clip(img + np.random.default_rng(3).normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    frayed = adaptive_mask(img, single_cell=True, convex=False) > 0
    hull = adaptive_mask(img, single_cell=True) > 0
    assert dice(hull, truth) > 0.95
    assert dice(hull, truth) > dice(frayed, truth) + 0.03
    assert (hull & ~ndi.binary_dilation(truth, iterations=2)).sum() == 0  # the hull does not spill out


def _cell_with_purple_cytoplasm(halo: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # a dark blue-purple nucleus in pale cytoplasm; with ``halo`` the inner cytoplasm is purple
    # (monocyte / eosinophil-like), red-blue enough in a* - b* to join the nucleus candidate
    size = (120, 120)
    img = np.empty(size + (3,), np.float32)
    img[:] = (235, 225, 215)
    img[disc(size, 60, 60, 38)] = (215, 190, 205)
    if halo:
        img[disc(size, 60, 60, 28)] = (160, 110, 185)
    nuc = disc(size, 60, 60, 18)
    img[nuc] = (80, 40, 135)
    img = np.clip(img + np.random.default_rng(3).normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    return img, nuc, disc(size, 60, 60, 38)


def test_nucleus_split_drops_purple_cytoplasm_from_the_nucleus():
    img, nuc, cell = _cell_with_purple_cytoplasm(halo=True)
    whole = adaptive_mask(img, single_cell=True)
    split = adaptive_mask(img, single_cell=True, nucleus_split=True)
    assert dice(whole == 2, nuc) < 0.7  # the purple ring joined the nucleus
    assert dice(split == 2, nuc) > 0.95
    assert np.array_equal(split > 0, whole > 0)  # the cell itself is unchanged


def test_nucleus_split_leaves_a_nucleus_of_one_colour_whole():
    img, nuc, _ = _cell_with_purple_cytoplasm(halo=False)
    whole = adaptive_mask(img, single_cell=True)
    assert dice(whole == 2, nuc) > 0.95
    assert np.array_equal(adaptive_mask(img, single_cell=True, nucleus_split=True), whole)
    f, truth = field()
    assert np.array_equal(adaptive_mask(f, nucleus_split=True) == 2, adaptive_mask(f) == 2)


def test_component_passes_nucleus_split():
    seg = make(ClassicalSegmenter, nucleus_split=True)
    assert seg.seg_params()["nucleus_split"] is True
    assert make(ClassicalSegmenter).seg_params()["nucleus_split"] is False
