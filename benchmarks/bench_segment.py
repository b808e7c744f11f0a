"""Segmentation benchmarks on the real BCCD fields (../shared/data/bccd-fields).

(a) ``dice``: classical vs a learned segmenter (DeepLabV3(+)/U-Net) on the BCCD test split,
    whole white cell and nucleus Dice at full resolution. The learned model trains on the
    BCCD ``train`` list and is selected on ``val``; ``test`` is only scored.
(c) ``stain``: classical Dice on the test list on raw vs Macenko / Reinhard normalized fields
    (reference chosen automatically among the training fields), blue-red vs hematoxylin channel.
(d) ``speed``: inference images/s of each architecture/encoder at input scale 0.25 and 0.5.
(b) ``throughput``: normalize (macenko) -> classical -> morphology -> cell crops on 640x480
    fields through hemaflow components, images/s, and the ratio to a plain loop calling the
    same library functions directly (torchstain, numpy/scipy/skimage) with the components' own
    parameters (the same cells), in one process, interleaved, best of two each.

Usage::

    python benchmarks/bench_segment.py dice --arch deeplabv3plus --encoder resnet18 --epochs 30
    python benchmarks/bench_segment.py stain
    python benchmarks/bench_segment.py throughput --n 40
    python benchmarks/bench_segment.py speed --n 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "bccd-fields"

from hemaflow.core.component import RunContext  # noqa: E402
from hemaflow.plugins.artifacts import ImageSet  # noqa: E402
from hemaflow.testing import make  # noqa: E402


def bccd_images(root: Path, parts=("train", "val", "test"), limit: int | None = None) -> ImageSet:
    """An ImageSet over the BCCD fields with masks, the ``split`` column from splits/*.txt."""
    rows = []
    for part in parts:
        ids = (DATA / "splits" / f"{part}.txt").read_text().split()
        for iid in ids[:limit]:
            mask = DATA / "masks" / f"{iid.replace('Image_', 'Image_Mask_')}.png"
            if not mask.exists():
                continue
            rows.append({"image_id": iid, "patient_id": iid, "label": "", "split": part,
                         "path": str(DATA / "images" / f"{iid}.jpg"), "mask_path": str(mask)})
    meta = {"classes": [], "patients_are_images": True,
            "mask_spec": {"mode": "threshold", "cell": 64, "nucleus": 208}}
    return ImageSet(root, pd.DataFrame(rows), meta).save()


def ctx_for(workdir: Path, step: str, **kw) -> RunContext:
    return RunContext(step_id=step, workdir=workdir / step, log=lambda m: print(m, flush=True), **kw)


def dice(a, b) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def score(images: ImageSet, masks, part: str = "test") -> dict[str, float]:
    ids = images.table.loc[images.table["split"] == part, "image_id"]
    cell, nuc, iou = [], [], []
    for iid in ids:
        t, p = images.read_mask(iid), masks.read_mask(iid)
        cell.append(dice(p > 0, t > 0))
        nuc.append(dice(p == 2, t == 2))
        inter, union = int(((p > 0) & (t > 0)).sum()), int(((p > 0) | (t > 0)).sum())
        iou.append(1.0 if union == 0 else inter / union)
    return {"cell_dice": float(np.mean(cell)), "cell_iou": float(np.mean(iou)),
            "nucleus_dice": float(np.mean(nuc)), "n": len(cell)}


def bench_dice(args) -> dict:
    from hemaflow.plugins.postprocess import MorphologyPostprocessor
    from hemaflow.plugins.segment import ClassicalSegmenter, DeepLabSegmenter

    work = Path(tempfile.mkdtemp(prefix="bench_seg_"))
    images = bccd_images(work / "data", limit=args.limit)
    t = images.table
    print(f"BCCD: {int((t.split == 'train').sum())} train, {int((t.split == 'val').sum())} val, "
          f"{int((t.split == 'test').sum())} test images", flush=True)
    res = {}
    t0 = time.perf_counter()
    cls_masks = make(ClassicalSegmenter).run(ctx_for(work, "classical"), images=images)["masks"]
    res["classical"] = score(images, cls_masks) | {"seconds": time.perf_counter() - t0}
    pp = make(MorphologyPostprocessor).run(ctx_for(work, "pp"), masks=cls_masks)["masks"]
    res["classical+morphology"] = score(images, pp)
    print("classical", res["classical"], flush=True)
    if args.epochs > 0:
        import torch

        torch.set_num_threads(args.threads)
        comp = make(DeepLabSegmenter, architecture=args.arch, encoder=args.encoder, epochs=args.epochs,
                    batch_size=args.batch_size, input_scale=args.scale, crop_size=args.crop, lr=args.lr,
                    steps_per_epoch=args.steps_per_epoch,
                    patience=args.patience)
        t0 = time.perf_counter()
        out = comp.run(ctx_for(work, "deeplab"), images=images)
        key = f"{args.arch}-{args.encoder}"
        res[key] = score(images, out["masks"]) | {
            "seconds": time.perf_counter() - t0, "best_epoch": out["model"].meta["best_epoch"],
            "val_dice": out["model"].meta["val_dice"], "params": vars(args)}
        print(key, res[key], flush=True)
        dl_pp = make(MorphologyPostprocessor).run(ctx_for(work, "dl_pp"), masks=out["masks"])["masks"]
        res[key + "+morphology"] = score(images, dl_pp)
        print(key + "+morphology", res[key + "+morphology"], flush=True)
    return res


def bench_stain(args) -> dict:
    """Classical Dice on the BCCD test list, raw vs Macenko/Reinhard-normalized, per nucleus channel."""
    from hemaflow.plugins.normalize import MacenkoNormalizer, ReinhardNormalizer
    from hemaflow.plugins.segment import ClassicalSegmenter

    work = Path(tempfile.mkdtemp(prefix="bench_stain_"))
    images = bccd_images(work / "data", limit=args.limit)
    train = ImageSet(work / "train", images.table[images.table["split"] == "train"].reset_index(drop=True),
                     images.meta).save()
    test = ImageSet(work / "test", images.table[images.table["split"] == "test"].reset_index(drop=True),
                    images.meta).save()
    res = {}
    inputs = {"raw": test}
    for cls in (MacenkoNormalizer, ReinhardNormalizer):
        comp = make(cls)
        # the automatic choice among training fields (what the recipe does with a split input)
        params = dict(comp.method_params(), resize=None, on_failure="passthrough", min_stained_fraction=0.01)
        ref, _ = comp._reference(ctx_for(work, f"ref_{cls.name}"), train, None, params)
        out = make(cls, reference=str(ref)).run(ctx_for(work, cls.name), images=test)["images"]
        inputs[cls.name] = out
        res[f"{cls.name}_reference"] = out.meta["stain_reference"]
        res[f"{cls.name}_outcomes"] = out.meta["stain_outcomes"]
    for name, imgs in inputs.items():
        for channel in ("blue_red", "hematoxylin"):
            masks = make(ClassicalSegmenter, channel=channel).run(ctx_for(work, f"{name}_{channel}"),
                                                                  images=imgs)["masks"]
            res[f"{name}/{channel}"] = score(imgs, masks)
            print(name, channel, res[f"{name}/{channel}"], flush=True)
    return res


def bench_speed(args) -> dict:
    """Inference images/s on 640x480 fields (random weights: speed only) per architecture/encoder/scale."""
    import torch

    from hemaflow.plugins.segment import build_model, predict_mask

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_speed_"))
    images = bccd_images(work / "data", parts=("test",), limit=args.n)
    imgs = [images.read_image(r) for _, r in images.table.iterrows()]
    res = {}
    for arch in ("deeplabv3", "deeplabv3plus", "unet"):
        for enc in args.encoders.split(","):
            for scale in (0.25, 0.5):
                net = build_model(arch, enc, 3).eval()
                predict_mask(net, imgs[0], mode="three_class", scale=scale)  # warm-up
                t0 = time.perf_counter()
                for im in imgs:
                    predict_mask(net, im, mode="three_class", scale=scale)
                key = f"{arch}-{enc}@{scale}"
                res[key] = len(imgs) / (time.perf_counter() - t0)
                print(f"{key}: {res[key]:.2f} images/s", flush=True)
    return res


def bench_throughput(args) -> dict:
    """Components (normalize -> classical -> morphology -> crops) vs a plain loop."""
    import torch
    import torchstain

    from hemaflow.lib import imageio as io
    from hemaflow.plugins.cells import CellCrops, extract_cells
    from hemaflow.plugins.normalize import MacenkoNormalizer
    from hemaflow.plugins.postprocess import MorphologyPostprocessor, clean_mask
    from hemaflow.plugins.segment import ClassicalSegmenter, classical_mask
    from hemaflow.plugins.segment.adaptive import adaptive_mask

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_tp_"))
    images = bccd_images(work / "data", parts=("test",), limit=args.n)
    n = len(images.table)
    ref_path = images.image_path(images.table.iloc[0])
    pipeline = [
        (make(MacenkoNormalizer, reference=str(ref_path)), "normalize"),
        (make(ClassicalSegmenter), "segment"),
        (make(MorphologyPostprocessor), "post"),
        (make(CellCrops), "cells"),
    ]
    seg_kw = pipeline[1][0].seg_params()
    algorithm = seg_kw.pop("algorithm")
    post_kw = pipeline[2][0].clean_params()
    cp = pipeline[3][0].params
    cell_kw = {k: cp[k] for k in ("crop_size", "scale", "margin", "padding", "pad_value", "min_area",
                                  "mask_neighbours") if k in cp}

    # plain loop: the same library calls with the components' own parameters, no artifacts,
    # no table bookkeeping
    def plain() -> int:
        norm = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        ref = io.read_image(ref_path)
        norm.fit(torch.from_numpy(ref).permute(2, 0, 1).contiguous())
        cells = 0
        crops_all = []
        for _, row in images.table.iterrows():
            img = io.read_image(images.image_path(row))
            out, _, _ = norm.normalize(I=torch.from_numpy(img).permute(2, 0, 1).contiguous(), stains=False)
            img_n = np.clip(out.numpy(), 0, 255).astype(np.uint8)
            io.write_png(work / "plain.png", img_n)
            mask = adaptive_mask(img_n, **seg_kw) if algorithm == "adaptive" else classical_mask(img_n, **seg_kw)
            io.write_png(work / "plain_mask.png", mask)
            mask, inst = clean_mask(mask, **post_kw)
            rows, crops, _ = extract_cells(img_n, mask, inst, **cell_kw)
            crops_all.append(crops)
            cells += len(rows)
        return cells

    def components() -> int:
        norm, seg, post, cellc = (c for c, _ in pipeline)
        imgs = norm.run(ctx_for(work, f"n{time.time_ns()}"), images=images)["images"]
        masks = seg.run(ctx_for(work, f"s{time.time_ns()}"), images=imgs)["masks"]
        masks = post.run(ctx_for(work, f"p{time.time_ns()}"), masks=masks)["masks"]
        cells = cellc.run(ctx_for(work, f"c{time.time_ns()}"), images=imgs, masks=masks)["cells"]
        return len(cells.table)

    res = {"n_images": n, "size": "640x480"}
    for name, fn in (("plain", plain), ("components", components), ("plain_again", plain),
                     ("components_again", components)):
        t0 = time.perf_counter()
        cells = fn()
        dt = time.perf_counter() - t0
        res[name] = {"seconds": dt, "images_per_s": n / dt, "cells": cells}
        print(name, res[name], flush=True)
    plain_s = min(res["plain"]["seconds"], res["plain_again"]["seconds"])
    comp_s = min(res["components"]["seconds"], res["components_again"]["seconds"])
    res["ratio_components_to_plain"] = comp_s / plain_s  # best of two each, interleaved (a busy machine)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["dice", "stain", "throughput", "speed"])
    ap.add_argument("--encoders", default="tu-resnet10t,resnet18,resnet50", help="speed: encoders to time")
    ap.add_argument("--arch", default="deeplabv3plus")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--crop", type=int, default=None)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--steps-per-epoch", type=int, default=None)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="images per partition (quick runs)")
    ap.add_argument("--n", type=int, default=40, help="throughput: number of fields")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    res = {"dice": bench_dice, "stain": bench_stain, "throughput": bench_throughput,
           "speed": bench_speed}[args.what](args)
    print(json.dumps(res, indent=1, default=str))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
