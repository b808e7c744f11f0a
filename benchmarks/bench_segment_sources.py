"""White-cell segmentation per source, leave-one-source-out (issue 13, item 5).

Sources (all under ../shared/data; see its README for licences):

* ``bccd-test``: the 72 BCCD fields of ``splits/test.txt`` (640x480, Giemsa). Scored on the whole
  field: Dice of all predicted white-cell pixels vs the mask (the fields have one masked cell).
* ``tecom``: wbc-crops Tecom, 300 single-cell crops (~120x120, rapid stain, GPL-3.0).
* ``cellavision``: wbc-crops CellaVision, 100 single-cell crops (300x300, standard stain, GPL-3.0).
  Crops are scored on the centre cell: the connected component of the prediction under (or
  nearest to) the image centre against the true cell under (or nearest to) the centre.

Every scorer takes a ``segment(img) -> mask`` callable (RGB uint8 HxWx3 in, uint8 HxW 0
background / 1 cytoplasm / 2 nucleus out), so another segmenter adds its rows with::

    from bench_segment_sources import load_source, score_source
    rows = score_source(my_segment, load_source("tecom"), crops=True)

Usage::

    python benchmarks/bench_segment_sources.py model --weights wbc-v1
    python benchmarks/bench_segment_sources.py model --weights path/to/model.safetensors \\
        --sources tecom cellavision --json /tmp/out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"

SOURCES = ("bccd-test", "tecom", "cellavision")
CROP_SOURCES = {"tecom", "cellavision"}

Segment = Callable[[np.ndarray], np.ndarray]


# -- data ------------------------------------------------------------------------------------------
def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def _grey(path: Path) -> np.ndarray:
    from PIL import Image

    a = np.asarray(Image.open(path))
    return a if a.ndim == 2 else a[..., 0]


def bccd_mask(path: Path) -> np.ndarray:
    """BCCD white-cell mask as uint8 0/1/2 (anti-aliased grey: cell > 64, nucleus > 208)."""
    g = _grey(path)
    return ((g > 64).astype(np.uint8) + (g > 208)).astype(np.uint8)


def crop_mask(path: Path) -> np.ndarray:
    """wbc-crops mask as uint8 0/1/2 (grey 0 background, 128 cytoplasm, 255 nucleus)."""
    g = _grey(path)
    return ((g > 64).astype(np.uint8) + (g > 192)).astype(np.uint8)


def bccd_ids(part: str) -> list[str]:
    """Image ids of a BCCD split list (train, val, trainval, test) that have a mask."""
    root = DATA / "bccd-fields"
    ids = (root / "splits" / f"{part}.txt").read_text().split()
    return [i for i in ids if (root / "masks" / f"{i.replace('Image_', 'Image_Mask_')}.png").exists()]


def load_bccd(part: str, limit: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, RGB image, 0/1/2 mask) of one BCCD split list."""
    root = DATA / "bccd-fields"
    out = []
    for iid in bccd_ids(part)[:limit]:
        out.append((iid, _rgb(root / "images" / f"{iid}.jpg"),
                    bccd_mask(root / "masks" / f"{iid.replace('Image_', 'Image_Mask_')}.png")))
    return out


def load_crops(source: str, limit: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(id, RGB image, 0/1/2 mask) of wbc-crops ``tecom`` or ``cellavision``."""
    root = DATA / "wbc-crops" / source
    out = []
    for img in sorted(root.glob("*.bmp"))[:limit]:
        m = img.with_suffix(".png")
        if m.exists():
            out.append((img.stem, _rgb(img), crop_mask(m)))
    return out


def load_source(name: str, limit: int | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Items of one source: ``bccd-<split>`` (e.g. bccd-test), ``tecom`` or ``cellavision``."""
    if name.startswith("bccd-"):
        return load_bccd(name[len("bccd-"):], limit)
    if name in CROP_SOURCES:
        return load_crops(name, limit)
    raise ValueError(f"unknown source {name!r}; known: bccd-train, bccd-val, {', '.join(SOURCES)}")


# -- scoring ---------------------------------------------------------------------------------------
def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    a, b = a.astype(bool), b.astype(bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def centre_component(fg: np.ndarray) -> np.ndarray:
    """The connected component of ``fg`` under the image centre, else the one nearest to it."""
    from scipy import ndimage

    lab, n = ndimage.label(fg)
    if n == 0:
        return np.zeros(fg.shape, bool)
    h, w = fg.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    k = lab[int(round(cy)), int(round(cx))]
    if k == 0:
        ys, xs = np.nonzero(lab)
        k = lab[ys, xs][np.argmin((ys - cy) ** 2 + (xs - cx) ** 2)]
    return lab == k


def centre_cell_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(whole-cell Dice, nucleus Dice) of the centre cell of a 0/1/2 prediction vs a 0/1/2 truth."""
    pc, tc = centre_component(pred > 0), centre_component(truth > 0)
    return dice(pc, tc), dice(pc & (pred == 2), tc & (truth == 2))


def field_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(whole-cell Dice, nucleus Dice) of all white-cell pixels of a field."""
    return dice(pred > 0, truth > 0), dice(pred == 2, truth == 2)


def score_source(segment: Segment, items: Iterable[tuple[str, np.ndarray, np.ndarray]], *,
                 crops: bool) -> list[dict]:
    """One row per image: id, cell_dice, nucleus_dice, empty (no predicted cell), seconds."""
    rows = []
    for iid, img, truth in items:
        t0 = time.perf_counter()
        pred = segment(img)
        sec = time.perf_counter() - t0
        c, n = (centre_cell_scores if crops else field_scores)(pred, truth)
        rows.append({"id": iid, "cell_dice": c, "nucleus_dice": n, "empty": bool((pred > 0).sum() == 0),
                     "seconds": sec})
    return rows


def summarize(rows: list[dict]) -> dict:
    c = np.array([r["cell_dice"] for r in rows])
    n = np.array([r["nucleus_dice"] for r in rows])
    return {"n": len(rows), "cell_dice_mean": float(c.mean()), "cell_dice_median": float(np.median(c)),
            "cell_dice_p10": float(np.percentile(c, 10)), "nucleus_dice_mean": float(n.mean()),
            "empty": int(sum(r["empty"] for r in rows)),
            "ms_per_image": 1000 * float(np.mean([r["seconds"] for r in rows]))}


def run_sources(segment: Segment, sources: Iterable[str], limit: int | None = None) -> dict[str, dict]:
    """Summary per source (see :func:`summarize`) for one segmenter."""
    out = {}
    for s in sources:
        rows = score_source(segment, load_source(s, limit), crops=s in CROP_SOURCES)
        out[s] = summarize(rows) | {"rows": rows}
    return out


def print_table(results: dict[str, dict[str, dict]]) -> None:
    """results: segmenter name -> source -> summary. Prints one markdown table."""
    print("| segmenter | source | n | cell Dice mean | median | p10 | nucleus Dice | empty | ms/image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, per in results.items():
        for s, r in per.items():
            print(f"| {name} | {s} | {r['n']} | {r['cell_dice_mean']:.3f} | {r['cell_dice_median']:.3f} | "
                  f"{r['cell_dice_p10']:.3f} | {r['nucleus_dice_mean']:.3f} | {r['empty']} | "
                  f"{r['ms_per_image']:.0f} |")


# -- the learned model -----------------------------------------------------------------------------
def model_segment(weights: str, threads: int | None = 2) -> tuple[Segment, dict]:
    """``segment`` callable of a shipped (by name) or local .safetensors white-cell model."""
    import torch

    from hemaflow.plugins.segment.learned import load_weights, predict_with_meta

    if threads:
        torch.set_num_threads(threads)
    net, meta = load_weights(weights)
    return (lambda img: predict_with_meta(net, img, meta)), meta


def field_speed(segment: Segment, n: int = 20) -> float:
    """640x480 BCCD test fields per second (after one warm-up call)."""
    items = load_bccd("test", n)
    segment(items[0][1])
    t0 = time.perf_counter()
    for _, img, _ in items:
        segment(img)
    return len(items) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model", help="score a learned model (shipped name or .safetensors path)")
    m.add_argument("--weights", default="wbc-v1")
    m.add_argument("--sources", nargs="+", default=list(SOURCES))
    m.add_argument("--limit", type=int, default=None, help="first N images per source (quick checks)")
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--speed-n", type=int, default=20, help="fields timed for fields/s (0: skip)")
    m.add_argument("--json", default=None, help="write the summaries (and per-image rows) here")
    a = ap.parse_args(argv)
    segment, meta = model_segment(a.weights, a.threads)
    res = run_sources(segment, a.sources, a.limit)
    name = f"{Path(a.weights).stem} ({meta.get('architecture')}-{meta.get('encoder')})"
    print_table({name: res})
    if a.speed_n:
        fps = field_speed(segment, a.speed_n)
        print(f"speed: {fps:.1f} fields/s (640x480, {a.threads} threads)")
        res["speed_fields_per_s"] = fps
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
