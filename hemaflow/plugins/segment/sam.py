"""Segment Anything / MedSAM with box prompts (optional ``segment_anything`` package, local
checkpoint)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hemaflow.core.bases import Segmenter
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.segment.classical import classical_mask
from hemaflow.plugins.segment.common import mask_file_name, write_mask_set


# -- SAM / MedSAM ------------------------------------------------------------------------------
def prompt_boxes(mask: np.ndarray, margin: float) -> list[tuple[int, int, int, int]]:
    """XYXY boxes around the connected cells of ``mask`` (> 0), grown by ``margin`` x their size."""
    from scipy import ndimage as ndi

    lab, _ = ndi.label(mask > 0)
    H, W = mask.shape
    boxes = []
    for sl in ndi.find_objects(lab):
        if sl is None:
            continue
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        dy, dx = int(round((y1 - y0) * margin)), int(round((x1 - x0) * margin))
        boxes.append((max(x0 - dx, 0), max(y0 - dy, 0), min(x1 + dx, W), min(y1 + dy, H)))
    return boxes


class SamSegmenter(Segmenter):
    """Segment Anything / MedSAM with box prompts, for users who have a checkpoint file.

    Boxes come from the classical segmenter (``prompts: classical``) or from the data set's own
    masks (``prompts: ground_truth``, how the original masks were drawn with MedSAM). SAM gives
    the whole cell; the nucleus is the classical nucleus inside it. Needs the optional package
    ``segment_anything`` (``pip install segment-anything``) and a local checkpoint (never
    downloaded); MedSAM checkpoints load as ``model_type: vit_b``.
    """

    kind = "segmenter"
    name = "sam"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "checkpoint": {"type": ["string", "null"], "default": None, "format": "path",
                           "description": "local SAM or MedSAM checkpoint (.pth); required"},
            "model_type": {"enum": ["vit_b", "vit_l", "vit_h"], "default": "vit_b",
                           "description": "SAM backbone of the checkpoint (MedSAM: vit_b)"},
            "prompts": {"enum": ["classical", "ground_truth"], "default": "classical",
                        "description": "where the box prompts come from"},
            "box_margin": {"type": "number", "minimum": 0, "maximum": 2, "default": 0.15,
                           "description": "boxes grow by this fraction of their size on each side"},
        },
        "additionalProperties": False,
    }
    inputs = {"images": "ImageSet"}
    outputs = {"masks": "MaskSet"}

    def check_params(self) -> list[tuple[str, str]]:
        """No checkpoint, or the optional package missing: said by ``validate``, before any step."""
        from hemaflow.core.validate import module_available

        out = []
        if not self.params["checkpoint"]:
            out.append(("/checkpoint", "the sam segmenter needs checkpoint: a local SAM or MedSAM .pth file "
                                       "(hemaflow never downloads weights)"))
        if not module_available("segment_anything"):
            out.append(("", "the sam segmenter needs the optional package segment-anything: "
                            "pip install 'hemaflow[sam]'"))
        return out

    def _predictor(self, device: str):
        ckpt = self.params["checkpoint"]
        if not ckpt:
            raise DataError("sam", "no checkpoint: set checkpoint: to a local SAM or MedSAM .pth file "
                            "(hemaflow never downloads weights; SAM: github.com/facebookresearch/segment-anything, "
                            "MedSAM: github.com/bowang-lab/MedSAM)")
        path = Path(ckpt).expanduser()
        if not path.exists():
            raise DataError(path, "SAM checkpoint not found; download it once and point checkpoint: at the file")
        try:
            from segment_anything import SamPredictor, sam_model_registry
        except ImportError:
            raise DataError("segment_anything", "the 'sam' segmenter needs the optional package segment-anything: "
                            "pip install segment-anything") from None
        try:
            sam = sam_model_registry[self.params["model_type"]](checkpoint=str(path))
        except Exception as exc:  # noqa: BLE001 - wrong file or wrong model_type
            raise DataError(path, f"cannot load as a SAM {self.params['model_type']} checkpoint "
                            f"({type(exc).__name__}: {exc})") from None
        return SamPredictor(sam.to(device).eval())

    def run(self, ctx: RunContext, images: Any) -> dict[str, Any]:
        from hemaflow.lib import imageio as io

        predictor = self._predictor(ctx.device)
        if self.params["prompts"] == "ground_truth" and not images.has_masks():
            raise DataError(images.path, "prompts: ground_truth needs a data set with masks; use prompts: classical")
        out = ctx.out_dir("masks")
        (out / "masks").mkdir(exist_ok=True)
        rows = []
        for i, row in ctx.progress(list(images.table.reset_index(drop=True).iterrows()), description="sam"):
            img = images.read_image(row)
            base = classical_mask(img)
            src = images.read_mask(row) if self.params["prompts"] == "ground_truth" else base
            cell = np.zeros(img.shape[:2], bool)
            boxes = prompt_boxes(src if src is not None else base, self.params["box_margin"])
            if boxes:
                predictor.set_image(img)  # RGB, as SAM expects
                for box in boxes:
                    m, _, _ = predictor.predict(box=np.array(box), multimask_output=False)
                    cell |= m[0].astype(bool)
            mask = np.zeros(img.shape[:2], np.uint8)
            mask[cell] = 1
            mask[cell & (base == 2)] = 2
            io.write_png(out / mask_file_name(i), mask)
            rows.append({"image_id": str(row["image_id"]), "path": mask_file_name(i)})
        return {"masks": write_mask_set(ctx, "masks", rows, {"source": self.name})}




@hookimpl
def register_segmenters(register: Any) -> None:
    register(SamSegmenter)
