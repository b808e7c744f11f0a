"""Train the shipped white-cell segmenter (``wbc-v1``) from scratch, on CPU.

Training data (licences allow shipping derived weights in an MIT package):

* BCCD fields of ``splits/train.txt`` (../shared/data/bccd-fields; BCCD MIT, masks MIT);
* hemaflow's own procedural smears (:mod:`hemaflow.lib.smear_generator`, MIT).

Model selection on the BCCD ``val.txt`` fields and on single-cell crops cut from them. No test
list and no wbc-crops image (GPL-3.0) is read unless ``--extra`` asks for it, and weights trained
with ``--extra`` are measurement-only (the script refuses to write them into the package).

Scale: every training sample is resized so its white cell is ``D * z`` px wide, where ``D`` is
the canonical cell diameter (the BCCD train cells at half resolution) and ``z`` a random zoom:
field crops (z in 0.7-1.4, neighbours and red cells around) and single-cell crops centred on a
cell (z in 0.7-1.9, the cell filling up to the whole crop, as in single-cell exports). At
inference the ``cell_size`` rule (:func:`hemaflow.plugins.segment.learned.predict_cell_size`)
brings every image, field or crop, to the scale where its largest cell is ``D`` px wide.

Augmentation: flips/rot90, HED stain jitter (scale and shift of hematoxylin/eosin/DAB
concentrations), HSV hue/saturation jitter, gamma/contrast/brightness, per-channel gain, Gaussian
blur, down-up sampling, sensor noise and JPEG compression.

Usage (the shipped model; about 45 min on 2 CPU cores)::

    python benchmarks/train_wbc_segmenter.py --out hemaflow/weights/wbc-v1.safetensors

Leave-one-source-out variants (measurement only, never shipped)::

    python benchmarks/train_wbc_segmenter.py --extra tecom --out /tmp/wbc-plus-tecom.safetensors
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_segment_sources import centre_component, dice, load_bccd, load_crops  # noqa: E402

from hemaflow.plugins.segment.learned import (  # noqa: E402
    _loss,
    _to_tensor,
    build_model,
    predict_with_meta,
    save_weights,
)

# skimage's H&E-DAB stain matrices (Ruifrok & Johnston), inlined so the jitter is one matmul
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], np.float32)
RGB_FROM_HED /= np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


# -- data ------------------------------------------------------------------------------------------
def cells_of(mask: np.ndarray) -> list[tuple[float, float, float]]:
    """(centre y, centre x, equivalent diameter) of each white cell (connected, >= 30 px) of a mask."""
    from scipy import ndimage

    lab, n = ndimage.label(mask > 0)
    out = []
    for k, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        area = int((lab[sl] == k).sum())
        if area < 30:
            continue
        cy, cx = ndimage.center_of_mass(lab[sl] == k)
        out.append((cy + sl[0].start, cx + sl[1].start, math.sqrt(4 * area / math.pi)))
    return out


def synthetic_fields(n: int, size: int, seed: int, ppu: float) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``n`` procedural fields (all classes, strong stain variation, random difficulty)."""
    from hemaflow.lib.smear_generator import ALL_CLASSES, patient_plan, render_field

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = ALL_CLASSES[i % len(ALL_CLASSES)]
        plan = patient_plan(label, seed=(seed, 7, i), n_images=1, wbc_per_image=(1, 3), abnormal_rate=(0.3, 0.9),
                            stain_variation=float(rng.uniform(0.5, 2.0)), difficulty=float(rng.uniform(0.2, 0.9)),
                            pixels_per_um=ppu * float(rng.uniform(0.85, 1.15)))
        img, mask, _ = render_field(plan, 0, size)
        out.append((f"synthetic_{i}", img, mask))
    return out


def window(img: np.ndarray, mask: np.ndarray, cy: float, cx: float, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Square window of ``side`` px centred at (cy, cx); reflect-padded where it leaves the image."""
    h, w = mask.shape
    y0, x0 = int(round(cy - side / 2)), int(round(cx - side / 2))
    y1, x1 = y0 + side, x0 + side
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    a, m = img[sy0:sy1, sx0:sx1], mask[sy0:sy1, sx0:sx1]
    pads = ((sy0 - y0, y1 - sy1), (sx0 - x0, x1 - sx1))
    if any(p for pp in pads for p in pp):
        a = np.pad(a, pads + ((0, 0),), mode="reflect")
        m = np.pad(m, pads, mode="reflect")
    return a, m


def resize_pair(img: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    if img.shape[0] == size and img.shape[1] == size:
        return img, mask
    return (np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR)),
            np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST)))


def sample(item: dict, rng: np.random.Generator, crop: int, D: float, p_cell: float) -> tuple[np.ndarray, np.ndarray]:
    """One (image, mask) training crop of ``crop`` px at a random cell scale (see module docstring)."""
    img, mask, cells = item["img"], item["mask"], item["cells"]
    h, w = mask.shape
    if cells and (item["crop"] or rng.random() < p_cell):   # single-cell crop
        cy, cx, d = cells[int(rng.integers(len(cells)))]
        z = math.exp(rng.uniform(math.log(0.7), math.log(1.9)))
        side = max(16, int(round(crop * d / (D * z))))
        cy += rng.normal(0, 0.06) * side
        cx += rng.normal(0, 0.06) * side
    else:                                                    # field crop
        d = item["d_ref"]
        z = math.exp(rng.uniform(math.log(0.7), math.log(1.4)))
        side = max(16, int(round(crop * d / (D * z))))
        if cells and rng.random() < 0.5:
            cy, cx, _ = cells[int(rng.integers(len(cells)))]
            cy += rng.uniform(-0.45, 0.45) * side
            cx += rng.uniform(-0.45, 0.45) * side
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    a, m = window(img, mask, cy, cx, side)
    a, m = resize_pair(a, m, crop)
    if rng.random() < 0.5:
        a, m = a[:, ::-1], m[:, ::-1]
    k = int(rng.integers(4))
    return augment_colour(np.ascontiguousarray(np.rot90(a, k)), rng), np.ascontiguousarray(np.rot90(m, k))


def augment_colour(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stain, colour, optics and compression jitter of an RGB uint8 image."""
    from PIL import Image, ImageFilter

    f = img.astype(np.float32)
    if rng.random() < 0.85:  # HED: scale and shift each stain's concentration
        od = -np.log((f + 1) / 256)
        c = od.reshape(-1, 3) @ HED_FROM_RGB
        c = c * rng.uniform(0.65, 1.35, 3).astype(np.float32) + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
        f = (256 * np.exp(-(c @ RGB_FROM_HED)) - 1).reshape(img.shape)
    f = f * rng.uniform(0.88, 1.12, 3).astype(np.float32)  # white balance
    f = np.clip(f, 0, 255)
    if rng.random() < 0.7:  # gamma, contrast, brightness
        g = math.exp(rng.uniform(math.log(0.6), math.log(1.6)))
        f = 255 * (f / 255) ** g
        mean = f.mean()
        f = (f - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-20, 20)
    out = Image.fromarray(np.clip(f, 0, 255).astype(np.uint8))
    if rng.random() < 0.6:  # hue and saturation
        hsv = np.asarray(out.convert("HSV")).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(rng.integers(-12, 13))) % 256
        hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.55, 1.5), 0, 255)
        out = Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    if rng.random() < 0.4:
        out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 2.0))))
    if rng.random() < 0.2:  # lower optical resolution
        s = out.size
        r = rng.uniform(0.35, 0.75)
        out = out.resize((max(8, int(s[0] * r)), max(8, int(s[1] * r))), Image.BILINEAR).resize(s, Image.BILINEAR)
    a = np.asarray(out)
    if rng.random() < 0.3:
        a = np.clip(a + rng.normal(0, rng.uniform(1, 8), a.shape), 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=int(rng.integers(25, 91)))
        a = np.asarray(Image.open(buf).convert("RGB"))
    return np.ascontiguousarray(a)


def items_from(pairs, *, crop: bool) -> list[dict]:
    out = []
    for iid, img, mask in pairs:
        cells = cells_of(mask)
        d_ref = float(np.median([c[2] for c in cells])) if cells else None
        out.append({"id": iid, "img": img, "mask": mask, "cells": cells, "d_ref": d_ref, "crop": crop})
    return out


def val_crops(items: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Single-cell crops cut from validation fields: the largest cell centred, two context widths
    and two pixel scales (x0.8, x1.6), so selection sees crop-like inputs of several sizes."""
    out = []
    for j, it in enumerate(items):
        if not it["cells"]:
            continue
        cy, cx, d = max(it["cells"], key=lambda c: c[2])
        for k, ctx in enumerate((1.35, 2.2)):
            side = int(round(d * ctx))
            a, m = window(it["img"], it["mask"], cy, cx, side)
            r = (0.8, 1.6)[(j + k) % 2]
            a, m = resize_pair(a, m, max(16, int(round(side * r))))
            out.append((a, m))
    return out


# -- training --------------------------------------------------------------------------------------
def evaluate(net, meta, fields, crops) -> dict:
    fd = [dice(predict_with_meta(net, it["img"], meta) > 0, it["mask"] > 0) for it in fields]
    cd = []
    for a, m in crops:
        p = predict_with_meta(net, a, meta)
        cd.append(dice(centre_component(p > 0), centre_component(m > 0)))
    f, c = float(np.mean(fd)), float(np.mean(cd)) if cd else float("nan")
    return {"val_field_dice": f, "val_crop_dice": c, "val_score": (f + c) / 2 if cd else f}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "hemaflow" / "weights" / "wbc-v1.safetensors"))
    ap.add_argument("--name", default="wbc-v1")
    ap.add_argument("--architecture", default="deeplabv3plus")
    ap.add_argument("--encoder", default="tu-resnet10t")
    ap.add_argument("--decoder-channels", type=int, default=128)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--p-cell", type=float, default=0.6, help="share of single-cell crops (rest: field crops)")
    ap.add_argument("--synthetic", type=int, default=240, help="procedural fields rendered for training")
    ap.add_argument("--synthetic-share", type=float, default=0.2)
    ap.add_argument("--extra", nargs="*", default=[], choices=["tecom", "cellavision"],
                    help="also train on these wbc-crops sources (GPL-3.0: measurement only, never shipped)")
    ap.add_argument("--extra-share", type=float, default=0.3)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--val-limit", type=int, default=None, help="first N val fields (smoke runs)")
    ap.add_argument("--train-limit", type=int, default=None, help="first N train fields (smoke runs)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-time budget: the cosine schedule ends by then (or at --steps), "
                    "and training stops there keeping the best validation checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import torch

    out = Path(a.out).resolve()
    if a.extra and (REPO / "hemaflow") in out.parents:
        raise SystemExit("weights trained on wbc-crops (GPL-3.0) are measurement only: write them outside the package")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    t_start = time.time()

    bccd = items_from(load_bccd("train", a.train_limit), crop=False)
    val = items_from(load_bccd("val", a.val_limit), crop=False)
    D = round(0.5 * float(np.median([it["d_ref"] for it in bccd if it["d_ref"]])), 1)
    synth_pairs = synthetic_fields(a.synthetic, 288, a.seed, ppu=4.6) if a.synthetic else []
    synth = items_from(synth_pairs, crop=False)
    extra = [it for s in a.extra for it in items_from(load_crops(s), crop=True)]
    crops = val_crops(val)
    print(f"train: {len(bccd)} BCCD fields, {len(synth)} synthetic, {len(extra)} extra ({a.extra}); "
          f"val: {len(val)} fields + {len(crops)} crops; canonical cell diameter {D} px; "
          f"data ready in {time.time() - t_start:.0f} s", flush=True)

    kwargs = {"decoder_channels": a.decoder_channels} if a.architecture == "deeplabv3plus" else {}
    net = build_model(a.architecture, a.encoder, 3, **kwargs)
    meta = {"name": a.name, "architecture": a.architecture, "encoder": a.encoder, "model_kwargs": kwargs,
            "target": "three_class", "scale_rule": "cell_size", "cell_diameter": D, "first_short_side": 240,
            "scale_tolerance": 1.5, "input_scale": 0.5,
            "training": {"data": ["bccd-fields splits/train.txt (MIT)", f"{len(synth)} hemaflow synthetic fields (MIT)"]
                         + [f"wbc-crops {s} (GPL-3.0, measurement only)" for s in a.extra],
                         "selection": "bccd-fields splits/val.txt fields + centre crops", "steps": a.steps,
                         "batch": a.batch, "crop": a.crop, "lr": a.lr, "seed": a.seed,
                         "command": "python benchmarks/train_wbc_segmenter.py " + " ".join(argv or sys.argv[1:])}}
    opt = torch.optim.AdamW(net.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    def progress(s: int) -> float:  # share of the cosine schedule done: by steps, or by wall time
        done = s / a.steps
        if a.minutes is not None:
            done = max(done, (time.time() - t_start) / (60 * a.minutes))
        return min(done, 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warmup)
                                              * 0.5 * (1 + math.cos(math.pi * progress(s))))
    history, best = [], (-1.0, None)
    losses = []
    t0 = time.time()
    for step in range(1, a.steps + 1):
        net.train()
        batch = []
        for _ in range(a.batch):
            u = rng.random()
            if extra and u < a.extra_share:
                pool = extra
            elif synth and u < a.extra_share * bool(extra) + a.synthetic_share:
                pool = synth
            else:
                pool = bccd
            batch.append(sample(pool[int(rng.integers(len(pool)))], rng, a.crop, D, a.p_cell))
        x = torch.stack([_to_tensor(b[0]) for b in batch])
        y = torch.from_numpy(np.stack([b[1] for b in batch]))
        loss = _loss(net(x), y, "three_class")
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        timed_out = a.minutes is not None and time.time() - t_start > 60 * a.minutes
        if step % 25 == 0 or step == 5:
            print(f"step {step} loss {np.mean(losses[-25:]):.4f} lr {sched.get_last_lr()[0]:.2e} "
                  f"{(time.time() - t0) / step:.2f} s/step", flush=True)
        if step % a.val_every == 0 or step == a.steps or timed_out:
            net.eval()
            tv = time.time()
            row = {"step": step, "train_loss": float(np.mean(losses[-a.val_every:]))} | evaluate(net, meta, val, crops)
            history.append(row)
            print(json.dumps(row) + f" (val {time.time() - tv:.0f} s)", flush=True)
            if row["val_score"] > best[0]:
                best = (row["val_score"], step)
                meta["training"].update(best_step=step, val=row, history=history,
                                        minutes=round((time.time() - t_start) / 60, 1))
                save_weights(net, out, meta)
                print(f"saved {out} ({out.stat().st_size / 1e6:.1f} MB)", flush=True)
        if timed_out:
            print(f"time budget of {a.minutes} min reached at step {step}", flush=True)
            break
    print(f"best val_score {best[0]:.4f} at step {best[1]}; {(time.time() - t_start) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
