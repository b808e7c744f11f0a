"""Data-step validation cost per image on the real data: validate none / header / auto / full.

Run: ``python benchmarks/bench_validate.py`` from the project root (needs ``../shared/data``).
Prints CPU milliseconds per image of the whole data step (listing, checks, ImageSet), serial, for
wbc-crops (BMP + masks), bccd-fields (640x480 JPEG + masks) and the cellavision crops re-encoded
as 360 px JPEGs in ``patient_folders`` (a CellaVision-like export, no masks), plus the cost of the
decode alone (PIL ``load()``). CPU time is the stable figure on a busy machine.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from hemaflow.lib import imageio as io
from hemaflow.plugins.datasets import BCCDFields, PatientFolders, WBCCrops
from hemaflow.testing import make, make_context

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def per_image_ms(fn, files) -> float:
    c = time.process_time()
    for f in files:
        fn(f)
    return (time.process_time() - c) / len(files) * 1e3


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        crops = sorted((DATA / "wbc-crops" / "cellavision").glob("*.bmp"))
        for i, f in enumerate(crops):
            (export / f"P{i % 10}").mkdir(parents=True, exist_ok=True)
            Image.open(f).convert("RGB").resize((360, 360)).save(export / f"P{i % 10}" / f"{f.stem}.jpg", quality=90)
        pd.DataFrame({"patient": [f"P{i}" for i in range(10)], "diagnosis": ["A", "B"] * 5}).to_csv(
            export / "labels.csv", index=False)
        decode = {"wbc-crops bmp": sorted((DATA / "wbc-crops").glob("*/*.bmp")),
                  "360 px jpg": sorted(export.glob("*/*.jpg")),
                  "bccd 640x480 jpg": sorted((DATA / "bccd-fields" / "images").glob("*.jpg"))}
        for name, files in decode.items():
            per_image_ms(io.decode_check, files)  # warm the page cache
            print(f"{name:<42} header {per_image_ms(io.image_size, files):5.2f} ms   "
                  f"decode {per_image_ms(io.decode_check, files):5.2f} ms CPU per image ({len(files)})")
        cases = [("wbc_crops (bmp + masks)", WBCCrops, {"path": str(DATA / "wbc-crops")}),
                 ("bccd_fields (jpg + masks)", BCCDFields, {"path": str(DATA / "bccd-fields")}),
                 ("patient_folders (360 px jpg)", PatientFolders, {"root": str(export)})]
        for name, cls, kw in cases:
            res = {}
            for level in ("none", "header", "auto", "full") * 2:  # the second round is reported
                c = time.process_time()
                images = make(cls, validate=level, **kw).run(make_context(Path(tmp) / "w" / level))["images"]
                res[level] = (time.process_time() - c) / len(images.table) * 1e3
            print(f"data step {name:<32} " + "   ".join(f"{k} {v:5.2f}" for k, v in res.items())
                  + f" ms CPU per image ({len(images.table)})")


if __name__ == "__main__":
    main()
