"""Learned segmenters: DeepLabV3 / DeepLabV3+ / U-Net from segmentation-models-pytorch, trained
on the training partition's masks and selected on the validation partition, or loaded from
shipped weights by name (``weights: wbc-v1``, files in ``hemaflow/weights/``) or from a local
``.safetensors`` file written by :func:`save_weights`.

This module holds the component (``deeplabv3``) and the partition of the images into
train/val/test. The networks, augmentation, loss and prediction are in
:mod:`hemaflow.lib.seg_nets`, the weights files in :mod:`hemaflow.lib.seg_weights`; their names
are re-exported here (the earlier import path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.bases import Segmenter
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.lib.seg_nets import (  # noqa: F401  (re-exported: the earlier import path)
    ARCHITECTURES, IMAGENET_MEAN, IMAGENET_STD, _loss, _pad_to_multiple, _rescale, _tiled, _to_tensor,
    augment_pair, build_model, dice_score, largest_cell_diameter, load_encoder_weights, predict_cell_size,
    predict_mask, predict_with_meta)
from hemaflow.lib.seg_weights import (  # noqa: F401  (re-exported: the earlier import path)
    WEIGHTS_DIR, load_weights, read_weights_meta, resolve_weights, save_weights, shipped_weights)
from hemaflow.plugins.segment.common import mask_file_name, report_overlays, write_mask_set


def partition_ids(images: Any, split: Any, fold: int, rng: np.random.Generator,
                  ctx: RunContext) -> dict[str, list[str]]:
    """Image ids per partition (train/val/test) from a Split, the ImageSet's ``split`` column, or
    (last resort, with a warning) a seeded 70/15/15 split by patient."""
    t = images.table.assign(image_id=images.table["image_id"].astype(str),
                            patient_id=images.table["patient_id"].astype(str))
    parts: dict[str, list[str]] = {}
    if split is not None:
        if fold not in split.folds():
            raise DataError(split.path, f"the split has no fold {fold}; folds: {split.folds()}")
        for name in ("train", "val", "test"):
            pats = split.patients(fold, name)
            parts[name] = list(t.loc[t["patient_id"].isin(pats), "image_id"])
    elif "split" in t.columns:
        col = t["split"].astype(str).str.lower().replace({"valid": "val", "validation": "val"})
        for name in ("train", "val", "test"):
            parts[name] = list(t.loc[col == name, "image_id"])
    else:
        pats = np.array(sorted(t["patient_id"].unique()))
        rng.shuffle(pats)
        n_val = max(1, int(round(0.15 * len(pats)))) if len(pats) > 2 else 0
        n_test = max(1, int(round(0.15 * len(pats)))) if len(pats) > 3 else 0
        groups = {"val": set(pats[:n_val]), "test": set(pats[n_val:n_val + n_test]),
                  "train": set(pats[n_val + n_test:])}
        for name, g in groups.items():
            parts[name] = list(t.loc[t["patient_id"].isin(g), "image_id"])
        ctx.warn("no split input and no 'split' column: trained on a seeded 70/15/15 patient split; "
                 "connect a splitter (split: <step>) to control which images train the model")
    if not parts.get("train"):
        raise DataError(images.path, "no training images for the segmenter (empty train partition)")
    return parts


class DeepLabSegmenter(Segmenter):
    """DeepLabV3 / DeepLabV3+ / U-Net (segmentation-models-pytorch) trained on the masks of the
    training partition, model selection on the validation partition, inference on every image."""

    kind = "segmenter"
    name = "deeplabv3"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "architecture": {"enum": list(ARCHITECTURES), "default": "deeplabv3plus",
                             "description": "deeplabv3 (as in the original work; 2-5x slower on CPU), "
                                            "deeplabv3plus or unet"},
            "encoder": {"type": "string", "default": "resnet18", "minLength": 1,
                        "description": "smp encoder name (resnet18, resnet50, efficientnet-b0, "
                                       "mobilenet_v2, tu-<timm model>...)"},
            "encoder_weights": {"type": ["string", "null"], "default": None, "format": "path",
                                "description": "local file with encoder weights (.pth/.safetensors); "
                                               "null = random init. Never downloaded"},
            "target": {"enum": ["three_class", "cell"], "default": "three_class",
                       "description": "three_class: background/cytoplasm/nucleus (CE + Dice); "
                                      "cell: whole cell only (BCE + Dice)"},
            "epochs": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 20,
                       "description": "training epochs (0 = no training; needs a model input)"},
            "steps_per_epoch": {"type": ["integer", "null"], "minimum": 1, "default": None,
                                "description": "optimizer steps per epoch (null: one pass over the training images)"},
            "batch_size": {"type": "integer", "minimum": 2, "maximum": 256, "default": 8,
                           "description": "training batch size (>= 2: batch norm needs two samples)"},
            "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.001,
                   "description": "AdamW learning rate (cosine decay)"},
            "weight_decay": {"type": "number", "minimum": 0, "default": 0.0001, "description": "AdamW weight decay"},
            "input_scale": {"type": "number", "exclusiveMinimum": 0, "maximum": 4, "default": 0.5,
                            "description": "images are resized by this factor for training and inference "
                                           "(masks come back at full size)"},
            "crop_size": {"type": ["integer", "null"], "minimum": 32, "default": 256,
                          "description": "random training crop (after input_scale); null = whole images"},
            "crop_focus": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5,
                           "description": "share of training crops placed to contain a white cell"},
            "colour_jitter": {"type": "number", "minimum": 0, "maximum": 0.5, "default": 0.1,
                              "description": "strength of the per-channel gain/contrast/brightness jitter"},
            "patience": {"type": ["integer", "null"], "minimum": 1, "default": 8,
                         "description": "stop after this many epochs without a better validation Dice"},
            "fold": {"type": "integer", "minimum": 0, "default": 0, "description": "fold of the split to train on"},
            "tile_size": {"type": "integer", "minimum": 64, "default": 1024,
                          "description": "images larger than this (after scaling) are segmented in tiles"},
            "threads": {"type": ["integer", "null"], "minimum": 1, "default": None,
                        "description": "torch CPU threads (null: torch default)"},
            # no schema default on purpose: a recipe without `weights` keeps its old cache key
            "weights": {"type": ["string", "null"], "minLength": 1, "format": "path",
                        "description": "default null (train). A shipped model name (e.g. wbc-v1, see "
                                       "hemaflow/weights/*.md) or a local .safetensors file from "
                                       "save_weights: inference only, architecture, encoder and input "
                                       "scale come from the file; the training parameters are ignored"},
        },
        "additionalProperties": False,
    }
    inputs = {"images": "ImageSet", "split": "Split?", "model": "Model?"}
    outputs = {"masks": "MaskSet", "model": "Model"}

    def input_files(self) -> dict[str, Path]:
        """The weights files in the cache key by content: ``encoder_weights``, and ``weights``
        (a shipped name stands for its file in ``hemaflow/weights/``)."""
        files = super().input_files()
        w = self.params.get("weights")
        if w and w in shipped_weights():
            files["/weights"] = shipped_weights()[w]
        return files

    def check_params(self) -> list[tuple[str, str]]:
        """An unknown shipped name or a missing weights file, before anything runs."""
        w = self.params.get("weights")
        if not w:
            return []
        try:
            resolve_weights(w)
        except DataError as exc:
            return [("/weights", str(exc))]
        return []

    def run(self, ctx: RunContext, images: Any, split: Any = None, model: Any = None) -> dict[str, Any]:
        import torch

        p = self.params
        if p["threads"]:
            torch.set_num_threads(p["threads"])
        torch.manual_seed(ctx.torch_seed("init"))
        mode = p["target"]
        n_out = 1 if mode == "cell" else 3
        out_model = ctx.out_dir("model")
        if p.get("weights"):
            if model is not None:
                raise DataError(model.path, "give either `weights` or a model input, not both")
            net, info = load_weights(p["weights"], ctx.device)
            mode = info["target"]
            ctx.log(f"loaded {p['weights']} ({info['architecture']}-{info['encoder']}, "
                    f"scale rule {info.get('scale_rule', 'fixed')}); no training")
        elif model is not None:
            net, info = self._load(model)
            mode = info["target"]
        else:
            if p["epochs"] == 0:
                raise DataError(images.path, "epochs is 0 and no model input is given: nothing to segment with")
            if not images.has_masks():
                raise DataError(images.path, "deeplabv3 trains on ground-truth masks, and this data set has "
                                "none; give it a trained model (inputs: {model: <step>.model}) or use "
                                "the 'classical' segmenter")
            net = build_model(p["architecture"], p["encoder"], n_out, p["encoder_weights"]).to(ctx.device)
            parts = partition_ids(images, split, p["fold"], ctx.rng("split"), ctx)
            info = self._train(ctx, net, images, parts, mode)
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
                  str(out_model / "model.safetensors"))
        from hemaflow.core.artifacts import Model

        model_art = Model(out_model, {k: v for k, v in info.items() if k != "history"}).save()
        if info.get("history"):
            pd.DataFrame(info["history"]).to_csv(out_model / "history.csv", index=False)
        masks = self._infer(ctx, net, images, info)
        report_overlays(ctx, images, masks, f"{info['architecture']} ({info['encoder']}) masks "
                        "(green cell, blue nucleus, yellow truth)")
        return {"masks": masks, "model": model_art}

    def _load(self, model: Any):
        from safetensors.torch import load_file

        meta = model.meta
        for key in ("architecture", "encoder", "target", "input_scale"):
            if key not in meta:
                raise DataError(model.path, f"not a deeplabv3 segmenter model (meta has no {key!r})")
        net = build_model(meta["architecture"], meta["encoder"], 1 if meta["target"] == "cell" else 3,
                          **meta.get("model_kwargs", {}))
        f = model.path / "model.safetensors"
        if not f.exists():
            raise DataError(f, "model checkpoint not found")
        net.load_state_dict(load_file(str(f)))
        return net, dict(meta)

    def _train(self, ctx: RunContext, net: Any, images: Any, parts: dict[str, list[str]], mode: str) -> dict:
        import torch

        p = self.params
        scale = float(p["input_scale"])

        def load(ids):
            pairs = []
            for iid in ids:
                m = images.read_mask(iid)
                if m is None:
                    continue
                pairs.append((_rescale(images.read_image(iid), scale), _rescale(m, scale, nearest=True)))
            return pairs

        train = load(parts["train"])
        val = load(parts.get("val", []))
        if len(train) < 1:
            raise DataError(images.path, "no training image has a mask")
        ctx.log(f"training {p['architecture']}-{p['encoder']} on {len(train)} images, "
                f"validating on {len(val)} (input scale {scale})")
        rng = ctx.rng("augment")
        opt = torch.optim.AdamW(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        bs = p["batch_size"]
        steps = p["steps_per_epoch"] or max(1, int(np.ceil(len(train) / bs)))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, p["epochs"] * steps))
        crop = p["crop_size"]
        if crop is None and len({m.shape for _, m in train}) > 1:
            crop = min(min(m.shape) for _, m in train)  # batches must stack
        best = (-1.0, None, -1)
        history, bad = [], 0
        for epoch in ctx.progress(range(p["epochs"]), description="deeplabv3 training"):
            net.train()
            losses = []
            for _ in range(steps):
                idx = rng.integers(0, len(train), size=bs)
                batch = [augment_pair(train[i][0], train[i][1], rng, crop=crop, colour=p["colour_jitter"],
                                      focus=p["crop_focus"]) for i in idx]
                batch = [_pad_to_multiple(a, m, 32) for a, m in batch]
                x = torch.stack([_to_tensor(b[0]) for b in batch]).to(ctx.device)
                y = torch.from_numpy(np.stack([b[1] for b in batch])).to(ctx.device)
                loss = _loss(net(x), y, mode)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
            row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses))}
            if val:
                d = [dice_score(predict_mask(net, im, mode=mode, device=ctx.device, tile=p["tile_size"]) > 0, m > 0)
                     for im, m in val]
                row["val_dice"] = float(np.mean(d))
                score = row["val_dice"]
            else:
                score = -row["train_loss"]
            history.append(row)
            ctx.log(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
            if score > best[0]:
                best = (score, {k: v.detach().clone() for k, v in net.state_dict().items()}, epoch + 1)
                bad = 0
            else:
                bad += 1
                if p["patience"] and bad >= p["patience"]:
                    ctx.log(f"early stop after epoch {epoch + 1}")
                    break
        if best[1] is not None:
            net.load_state_dict(best[1])
        if not val:
            ctx.warn("no validation images: the model of the last-best training loss was kept")
        ctx.report.table("Segmenter training", history, section="segmentation")
        return {"architecture": p["architecture"], "encoder": p["encoder"], "target": mode,
                "input_scale": scale, "best_epoch": best[2],
                "val_dice": best[0] if val else None, "n_train": len(train), "n_val": len(val),
                "history": history}

    def _infer(self, ctx: RunContext, net: Any, images: Any, info: dict[str, Any]) -> Any:
        from hemaflow.lib import imageio as io

        out = ctx.out_dir("masks")
        (out / "masks").mkdir(exist_ok=True)
        rows = []
        table = images.table.reset_index(drop=True)
        for i, row in ctx.progress(list(table.iterrows()), description="deeplabv3 inference"):
            img = images.read_image(row)
            mask = predict_with_meta(net, img, info, device=ctx.device, tile=self.params["tile_size"])
            io.write_png(out / mask_file_name(i), mask)
            rows.append({"image_id": str(row["image_id"]), "path": mask_file_name(i)})
        return write_mask_set(ctx, "masks", rows, {"source": self.name})



@hookimpl
def register_segmenters(register: Any) -> None:
    register(DeepLabSegmenter)
