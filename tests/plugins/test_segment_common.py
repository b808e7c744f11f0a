"""What the segmenters share (hemaflow.plugins.segment.common): images without a white cell are
recorded as a warning, once, by the segmenter's step."""

from __future__ import annotations

from hemaflow.plugins.postprocess import MorphologyPostprocessor
from hemaflow.plugins.segment import ClassicalSegmenter
from hemaflow.plugins.segment.common import write_mask_set
from hemaflow.testing import make, make_context
from tests.plugins.seg_fixtures import field, image_set


def test_write_mask_set_records_empty_images_as_a_warning(tmp_path):
    ctx = make_context(tmp_path / "w")
    rows = [{"image_id": f"i{k}", "path": f"masks/{k:06d}.png"} for k in range(5)]
    write_mask_set(ctx, "masks", rows, {"source": "x", "empty_images": 2})
    assert ctx.warnings == ["2 of 5 images have no white cell (empty mask)"]
    quiet = make_context(tmp_path / "w2")
    write_mask_set(quiet, "masks", rows, {"source": "x", "empty_images": 0})
    write_mask_set(quiet, "masks", rows, {"source": "x", "empty_images": 2, "postprocess": "morphology"})
    assert quiet.warnings == []


def test_segmenter_warns_once_and_the_post_processor_does_not_repeat_it(tmp_path):
    blank, _ = field(wbcs=(), rbcs=(), seed=3)  # background only: no white cell to find
    images = image_set(tmp_path / "data", [field(seed=0), (blank, blank[..., 0] * 0)])
    ctx = make_context(tmp_path / "w")
    masks = make(ClassicalSegmenter).run(ctx, images=images)["masks"]
    assert masks.meta["empty_images"] == 1
    assert ctx.warnings == ["1 of 2 images have no white cell (empty mask)"]
    post = make_context(tmp_path / "w2")
    make(MorphologyPostprocessor).run(post, masks=masks)
    assert not any("no white cell" in w for w in post.warnings)
