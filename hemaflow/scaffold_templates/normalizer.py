"""A hemaflow stain normalizer: per-channel contrast stretch between two percentiles."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hemaflow import Normalizer, hookimpl
from hemaflow.plugins.artifacts import ImageSet
from hemaflow.lib.imageio import write_png


class TemplateComponent(Normalizer):
    """Stretch each colour channel so that its ``low`` and ``high`` percentiles become 0 and 255.

    Input ``images: ImageSet``; output ``images: ImageSet`` with the same rows (RGB uint8 PNGs).
    A flat channel (a grey image) is kept as it is.
    """

    name = "template_component"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "low": {"type": "number", "minimum": 0, "maximum": 50, "default": 1.0},
            "high": {"type": "number", "minimum": 50, "maximum": 100, "default": 99.0},
        },
        "additionalProperties": False,
    }

    def run(self, ctx, images: ImageSet):
        out = ctx.out_dir("images")
        rows = []
        for _, row in ctx.progress(list(images.table.iterrows()), description="contrast stretch"):
            img = images.read_image(row).astype(np.float64)
            lo, hi = np.percentile(img.reshape(-1, 3), [self.params["low"], self.params["high"]], axis=0)
            span = hi - lo
            flat = span < 1.0
            stretched = (img - lo) / np.where(flat, 1.0, span) * 255.0
            img = np.where(flat, img, stretched)
            rel = f"{row['image_id']}.png"
            write_png(out / rel, np.clip(np.round(img), 0, 255).astype(np.uint8))
            rows.append(dict(row.to_dict(), path=rel))
        # derive() keeps classes, mask spec and the ground-truth masks of the input
        return {"images": images.derive(out, pd.DataFrame(rows)).save()}


@hookimpl
def register_normalizers(register):
    register(TemplateComponent)
