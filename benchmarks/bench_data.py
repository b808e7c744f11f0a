"""Data-stage timings: synthetic generation, lazy (header) vs full validation, fingerprints.

Run: ``python benchmarks/bench_data.py`` from the project root (the real-data rows need
``../shared/data``). Prints wall and CPU seconds side by side; CPU seconds are the stable number
on a busy machine.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from hemaflow.plugins.datasets import BCCDFields, ClassFolders, SyntheticSmears
from hemaflow.testing import make, make_context


def timed(label: str, fn, n: int | None = None) -> object:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    w, c = time.perf_counter() - w0, time.process_time() - c0
    per = f"   {1000 * c / n:7.2f} ms CPU per item ({n} items)" if n else ""
    print(f"{label:<58} wall {w:6.2f} s   CPU {c:6.2f} s{per}")
    return out


def main() -> None:
    import scipy.ndimage  # noqa: F401  (import cost is not generation cost)

    for name, kw, n in [
        ("synthetic_smears small (5 cls x 2 pat x 1 img, 96 px)",
         dict(patients_per_class=2, images_per_patient=1, image_size=96), 10),
        ("synthetic_smears default (5 cls x 8 pat x 3 img, 256 px)", {}, 120),
        ("synthetic_smears 5 cls x 20 pat x 4 img, 256 px", dict(patients_per_class=20, images_per_patient=4), 400),
    ]:
        with tempfile.TemporaryDirectory() as d:
            timed(name, lambda: make(SyntheticSmears, **kw).run(make_context(d)), n)

    # many small files: what listing, header checks and fingerprints cost per image
    n_files = 20000
    with tempfile.TemporaryDirectory() as d:
        import numpy as np
        from PIL import Image

        root = Path(d) / "many"
        tiny = np.zeros((8, 8, 3), np.uint8)
        for split in ("train", "test"):
            for cls in ("A", "B"):
                (root / split / cls).mkdir(parents=True)
        for i in range(n_files):
            Image.fromarray(tiny).save(root / ("train", "test")[i % 2] / ("A", "B")[(i // 2) % 2] / f"{i:06d}.png")
        for validate in ("none", "header"):
            with tempfile.TemporaryDirectory() as w:
                timed(f"class_folders {n_files} files, validate={validate}",
                      lambda: make(ClassFolders, root=str(root), validate=validate).run(make_context(w)), n_files)
        timed(f"class_folders {n_files} files, fingerprint", lambda: make(ClassFolders, root=str(root)).fingerprint(),
              n_files)

    bccd = Path("../shared/data/bccd-fields")
    if bccd.exists():
        for validate in ("none", "header", "full"):
            with tempfile.TemporaryDirectory() as d:
                timed(f"bccd_fields (364 fields + masks), validate={validate}",
                      lambda: make(BCCDFields, path=str(bccd), validate=validate).run(make_context(d)), 364)
        timed("bccd_fields fingerprint (stat of 728 files)", lambda: make(BCCDFields, path=str(bccd)).fingerprint(), 728)
    else:
        print("(../shared/data not found: real-data rows skipped)")


if __name__ == "__main__":
    main()
