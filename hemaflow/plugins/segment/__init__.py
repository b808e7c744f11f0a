"""White-cell segmenters: ``classical`` (no training), ``ground_truth``, ``deeplabv3``, ``sam``.

Every segmenter takes ``images: ImageSet`` and returns ``masks: MaskSet``: one uint8 PNG per
image with 0 background, 1 cytoplasm, 2 nucleus (the conventions of
:mod:`hemaflow.plugins.artifacts`). Only white cells are foreground: red cells and platelets are
background.

* ``classical``: a nucleus channel (blue minus red by default; hematoxylin from colour
  deconvolution or HSV saturation as alternatives) thresholded with Otsu (with a floor so fields
  without a white cell stay empty), cleaned by morphology; the cell is the convex hull of each
  nucleus grown by ``cytoplasm_ratio`` x sqrt(nucleus area). Red cells are pink (red > blue) and
  stay below the threshold.
* ``ground_truth``: the data set's own masks passed through as a MaskSet (upper bound, and for
  feature extraction on expert masks).
* ``deeplabv3``: DeepLabV3 / DeepLabV3+ / U-Net from segmentation-models-pytorch trained on the
  training partition's masks, selected on the validation partition.
* ``sam``: Segment Anything / MedSAM with box prompts from the classical segmenter, for users
  who have a checkpoint file and the ``segment_anything`` package.

Modules: :mod:`.classical` (``classical``, ``ground_truth``), :mod:`.learned` (``deeplabv3``),
:mod:`.sam` (``sam``) and :mod:`.common` (what they share with ``postprocess`` and ``cells``:
mask file names, writing a MaskSet, overlays). Each module registers its own components
(``hemaflow.plugins.DEFAULT_PLUGINS``).
"""

from __future__ import annotations

from hemaflow.plugins.segment.classical import (AUTO_MIN_NUCLEUS_FRACTION, MIN_THRESHOLD, ClassicalSegmenter,
                                                 GroundTruthSegmenter, _disk, classical_mask, nucleus_channel)
from hemaflow.plugins.segment.common import mask_file_name, overlay, report_overlays, write_mask_set
from hemaflow.plugins.segment.learned import (DeepLabSegmenter, augment_pair, build_model, dice_score,
                                               load_encoder_weights, partition_ids, predict_mask)
from hemaflow.plugins.segment.sam import SamSegmenter, prompt_boxes

__all__ = ["AUTO_MIN_NUCLEUS_FRACTION", "MIN_THRESHOLD", "ClassicalSegmenter", "DeepLabSegmenter",
           "GroundTruthSegmenter", "SamSegmenter", "_disk", "augment_pair", "build_model", "classical_mask",
           "dice_score", "load_encoder_weights", "mask_file_name", "nucleus_channel", "overlay", "partition_ids",
           "predict_mask", "prompt_boxes", "report_overlays", "write_mask_set"]
