from __future__ import annotations

import numpy as np
import pytest

from hemaflow.core.errors import DataError
from hemaflow.plugins.postprocess import MorphologyPostprocessor, clean_mask, split_touching
from hemaflow.plugins.segment import GroundTruthSegmenter
from hemaflow.testing import check_component, make, make_context
from tests.plugins.seg_fixtures import disc, field, image_set


def test_contract(registry):
    check_component(MorphologyPostprocessor)
    assert registry.get("postprocessor", "morphology") is MorphologyPostprocessor


def test_watershed_splits_two_touching_discs():
    shape = (80, 120)
    both = disc(shape, 40, 40, 22) | disc(shape, 40, 76, 22)  # centres 36 px apart, radius 22
    from scipy import ndimage as ndi
    assert ndi.label(both)[1] == 1  # they touch
    labels = split_touching(both)
    assert labels.max() == 2
    assert labels[40, 40] != labels[40, 76] and labels[40, 40] > 0 and labels[40, 76] > 0
    # the cut runs through the neck (x = 58), each half holds about half of the pixels
    sizes = np.bincount(labels.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) < 0.05 * sizes.sum()
    assert set(np.unique(labels[:, :50])) <= {0, labels[40, 40]}


def test_watershed_keeps_one_irregular_cell_whole():
    shape = (80, 120)
    yy, xx = np.mgrid[:80, :120]
    ellipse = ((yy - 40) / 28.0) ** 2 + ((xx - 60) / 45.0) ** 2 <= 1
    bumpy = ellipse | disc(shape, 18, 60, 8)  # a lobe on the rim
    assert split_touching(bumpy).max() == 1
    assert split_touching(disc(shape, 40, 60, 30)).max() == 1


def test_clean_mask_fill_holes_small_objects_area_range():
    m = np.zeros((100, 100), np.uint8)
    m[10:40, 10:40] = 1
    m[20:25, 20:25] = 0         # a hole
    m[28:33, 28:33] = 2         # nucleus
    m[60:63, 60:63] = 1         # speck (9 px)
    m[50:95, 50:95] = 1         # big object (2025 px)
    mask, inst = clean_mask(m, opening_radius=0, closing_radius=0, min_area=50, max_area=1500)
    assert inst.dtype == np.int32 and inst.max() == 1
    assert mask[22, 22] == 1    # hole filled
    assert (mask == 2).sum() == 25
    assert mask[70, 70] == 0 and mask[61, 61] == 0
    _, inst = clean_mask(m, min_area=50, max_area=None)
    assert inst.max() == 2
    _, inst = clean_mask(m, min_area=50, exclude_border=True)
    assert inst.max() == 2     # nothing touches the border here
    m[0:12, 15:20] = 1        # the first cell now reaches the top border
    _, inst = clean_mask(m, min_area=50, exclude_border=True, split=False)
    assert inst.max() == 1 and inst[25, 25] == 0 and inst[70, 70] == 1


def test_component_labels_instances(tmp_path):
    fields = [field(wbcs=((48, 40, 20), (48, 74, 20)), rbcs=()), field(seed=1)]
    images = image_set(tmp_path / "data", fields)
    masks = make(GroundTruthSegmenter).run(make_context(tmp_path / "gt"), images=images)["masks"]
    out = make(MorphologyPostprocessor).run(make_context(tmp_path / "w"), masks=masks)["masks"]
    assert list(out.table["n_cells"]) == [2, 1]
    inst = out.read_instances("im0")
    assert inst.dtype == np.int32 and inst.shape == (96, 128)
    assert inst[48, 40] != inst[48, 74]
    m = out.read_mask("im0")
    assert m[48, 40] == 2 and m[48, 56] == 1 and m[0, 0] == 0
    assert out.meta["n_cells"] == 3


def test_component_bad_mask(tmp_path):
    images = image_set(tmp_path / "data", [field()])
    masks = make(GroundTruthSegmenter).run(make_context(tmp_path / "gt"), images=images)["masks"]
    bad = masks.resolve(masks.table.iloc[0]["path"])
    from hemaflow.lib import imageio as io
    io.write_png(bad, np.full((8, 8), 7, np.uint8))
    with pytest.raises(DataError, match="mask has value 7; expected 0, 1 or 2"):
        make(MorphologyPostprocessor).run(make_context(tmp_path / "w"), masks=masks)
