"""Instance encoders for MIL, with pre-training that needs no external weights.

``instance_encoder`` (kind ``features``) turns every cell crop of a CellSet into an embedding
with a timm backbone. Pretrained weights are rarely at hand in a hospital network, so the
backbone can be pre-trained *inside each training fold only*:

* ``pretrain: weak`` — weakly supervised: every cell inherits its patient's label; a linear head
  on the backbone is trained with cross-entropy on the fold's training patients' cells and the
  epoch with the lowest loss on the fold's validation patients' cells is kept.
* ``pretrain: simclr`` — self-supervised SimCLR-style contrastive learning (NT-Xent loss on two
  augmented views of each crop) on the fold's training (and validation) cells; labels unused.
* ``pretrain: none`` — the backbone as built (random init, or ``pretrained``: a local file, e.g.
  DinoBloom or DINOv2 weights: a frozen foundation-model encoder, cached by the file's content).

Test patients' cells are never seen during pre-training of the fold that predicts them, so the
embeddings are per fold: the output FeatureTable has a ``fold`` column (``-1`` for ``none``,
the same embeddings for every fold). The encoder checkpoints are saved in the ``model`` output;
the step is cached, so every aggregator ablation downstream reuses them. A split with
``refit: true`` adds its refit fold: pre-trained on every training and validation patient for
the median of the folds' chosen epochs (``weak``) or the same epochs (``simclr``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.artifacts import Model
from hemaflow.core.bases import FeatureExtractor
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.lib.backbones import create_backbone
from hemaflow.lib.encoder_training import embed, pretrain_fold
from hemaflow.plugins.splits import refit_epochs

FROZEN_UNUSED = ("epochs", "lr", "max_cells", "temperature", "projection_dim", "threads")  # unused with pretrain: none


class InstanceEncoder(FeatureExtractor):
    """Embeds every cell crop with a timm backbone, pre-trained per training fold if asked.

    Example::

        encode:
          uses: instance_encoder
          inputs: {cells: cells, split: split}
          with: {backbone: resnet10t, pretrain: weak, epochs: 3}
    """

    kind = "features"
    name = "instance_encoder"
    version = "2"
    schema = {
        "type": "object",
        "properties": {
            "backbone": {"type": "string", "default": "resnet10t", "minLength": 1,
                         "description": "timm model name (built without classifier; e.g. resnet10t, resnet18, "
                                        "convnext_atto, test_resnet for tests)"},
            "pretrained": {"type": ["string", "null"], "default": None,
                           "description": "local weights file loaded before pre-training: hemaflow/timm .safetensors or "
                                          ".pth state dict, plain DINOv2, or a DinoBloom checkpoint ({teacher: "
                                          "backbone.*}; backbone vit_small_patch14_dinov2 etc., image_size 224, "
                                          "pretrain: none for a frozen encoder). null: random init. Nothing is "
                                          "ever downloaded"},
            "pretrain": {"enum": ["none", "weak", "simclr"], "default": "weak",
                         "description": "pre-training inside each training fold: none, weak (cells inherit the "
                                        "patient label) or simclr (contrastive, labels unused)"},
            "image_size": {"type": "integer", "minimum": 16, "maximum": 512, "default": 64,
                           "description": "crops are resized to this many pixels before the backbone"},
            "epochs": {"type": "integer", "minimum": 0, "maximum": 500, "default": 3,
                       "description": "pre-training epochs per fold"},
            "batch_size": {"type": "integer", "minimum": 2, "maximum": 4096, "default": 64,
                           "description": "crops per batch (pre-training and embedding)"},
            "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": 0.001,
                   "description": "AdamW learning rate for pre-training"},
            "max_cells": {"type": "integer", "minimum": 0, "default": 2000,
                          "description": "pre-training: at most this many random training cells per epoch (0: all)"},
            "temperature": {"type": "number", "exclusiveMinimum": 0, "default": 0.5,
                            "description": "simclr: NT-Xent temperature"},
            "projection_dim": {"type": "integer", "minimum": 2, "default": 64,
                               "description": "simclr: output size of the projection head"},
            "threads": {"type": "integer", "minimum": 0, "default": 1,
                        "description": "torch CPU threads for this step (0: torch default). 1 is the default: on busy or small machines several threads are often much slower"},
            "stain_jitter": {"type": "number", "minimum": 0, "maximum": 0.5, "default": 0.0,
                             "description": "pre-training: HED stain augmentation strength sigma (Tellez et al. 2018: "
                                            "H, E, D optical densities scaled by 1 +- sigma and shifted by +- sigma "
                                            "per crop; about 0.05 mimics another lab's stain). 0: off"},
        },
        "additionalProperties": False,
    }
    inputs = {"cells": "CellSet", "split": "Split?"}
    outputs = {"embeddings": "FeatureTable", "model": "Model"}

    def fingerprint(self) -> str | None:
        """The content hash of the ``pretrained`` weights file (part of the step's cache key): a
        frozen encoder's embeddings are computed once per (weights content, crop settings: the
        ``cells`` input's key) and reused by every ablation, and new weights under the same file
        name recompute."""
        from pathlib import Path

        from hemaflow.lib.backbones import checkpoint_file, weights_sha256

        w = self.params.get("pretrained")
        if w and Path(w).expanduser().exists():
            return weights_sha256(checkpoint_file(w))
        return None

    def cache_params(self) -> dict[str, Any]:
        """The parameters in the cache key: the weights file's *path* is left out (its content hash
        is the fingerprint), and with ``pretrain: none`` (a frozen encoder) so are the pre-training
        options, which cannot change its embeddings."""
        params = dict(self.params)
        if not params.get("stain_jitter"):
            params.pop("stain_jitter", None)  # off: the key of runs from before the option
        if params.get("pretrained"):
            params["pretrained"] = "<content: see fingerprint>"
        if params["pretrain"] == "none":
            for k in FROZEN_UNUSED:
                params.pop(k, None)
        return params

    def check_params(self) -> list[tuple[str, str]]:
        """Problems JSON Schema cannot see: an unknown timm backbone, a missing weights file."""
        from pathlib import Path

        from hemaflow.lib.backbones import timm_model_problem

        out = []
        problem = timm_model_problem(self.params["backbone"])
        if problem:
            out.append(("/backbone", problem))
        w = self.params.get("pretrained")
        if w and not Path(w).expanduser().exists():
            out.append(("/pretrained", f"{w}: file not found (a local weights file; nothing is downloaded)"))
        return out

    def run(self, ctx: RunContext, cells, split=None) -> dict[str, Any]:
        import torch

        threads = torch.get_num_threads()
        if self.params["threads"]:
            torch.set_num_threads(int(self.params["threads"]))
        from threadpoolctl import threadpool_limits

        try:
            with threadpool_limits(limits=int(self.params["threads"]) or None):
                return self._run(ctx, cells, split)
        finally:
            torch.set_num_threads(threads)

    def _run(self, ctx: RunContext, cells, split) -> dict[str, Any]:
        import torch
        from safetensors.torch import save_file

        from hemaflow.plugins.artifacts import FeatureTable

        p = self.params
        mode = p["pretrain"]
        if mode != "none" and split is None:
            raise DataError(cells.path, f"pretrain: {mode} needs a `split` input (pre-training uses each "
                                        "fold's training patients only)")
        t = cells.table.reset_index(drop=True)
        crops_all = cells.crops
        crops = np.asarray(crops_all[t["crop_index"].to_numpy(np.int64)]) if len(t) else np.zeros((0, 8, 8, 3), np.uint8)
        classes = cells.classes or sorted(str(v) for v in t["label"].dropna().unique())
        model_dir = ctx.out_dir("model")
        folds = [-1] if mode == "none" else split.fit_folds()
        refit = None if mode == "none" else split.refit_fold()
        frames, fold_meta = [], []
        ids = t[["cell_id", "image_id", "patient_id", "label"]].astype(str)
        pid = ids["patient_id"].to_numpy()
        for fold in ctx.progress(folds, description="encoder folds"):
            torch.manual_seed(ctx.torch_seed("init", fold))
            backbone = create_backbone(p["backbone"], pretrained=p["pretrained"], img_size=int(p["image_size"]))
            info: dict[str, Any] = {"fold": int(fold)}
            if mode != "none":
                train_p = split.patients(fold, "train")
                val_p = split.patients(fold, "val")
                tr = np.isin(pid, list(train_p))
                va = np.isin(pid, list(val_p))
                if mode == "simclr":
                    tr = tr | va  # labels unused: validation cells are fair game, test cells never
                if tr.sum() < 2:
                    raise DataError(cells.path, f"fold {fold}: fewer than 2 training cells to pre-train on")
                lab = ids["label"].map({c: i for i, c in enumerate(classes)})
                y = lab.to_numpy() if lab.notna().all() else None
                if mode == "weak" and y is None:
                    raise DataError(cells.path, "pretrain: weak needs a label (in classes) on every cell")
                y = y.astype(np.int64) if y is not None else None
                fold_p = p
                if fold == refit:  # every training patient, no validation: the folds' chosen epochs
                    fold_p = dict(p, epochs=refit_epochs([m["best_epoch"] for m in fold_meta]))
                    info.update(refit=True, epochs=fold_p["epochs"])
                res = pretrain_fold(backbone, crops[tr], y[tr] if y is not None else None, crops[va],
                                    y[va] if y is not None else None, mode, fold_p, ctx.torch_seed("pretrain", fold),
                                    len(classes), ctx=ctx, name="refit" if fold == refit else f"fold{fold}",
                                    device=ctx.device)
                info.update(best_loss=res["best_loss"], history=res["history"], best_epoch=res["best_epoch"])
            save_file({k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()},
                      str(model_dir / ("encoder.safetensors" if fold < 0 else f"fold{fold}.safetensors")))
            emb = embed(backbone, crops, int(p["image_size"]), int(p["batch_size"]), device=ctx.device)
            cols = [f"emb_{i:03d}" for i in range(emb.shape[1])]
            df = pd.concat([ids.reset_index(drop=True), pd.DataFrame(emb, columns=cols)], axis=1)
            if fold >= 0:
                df.insert(4, "fold", int(fold))
            frames.append(df)
            fold_meta.append(info)
        table = pd.concat(frames, ignore_index=True)
        cols = [c for c in table.columns if c.startswith("emb_")]
        meta = {"feature_columns": cols, "classes": classes, "source": self.name, "backbone": p["backbone"],
                "pretrain": mode, "per_fold": mode != "none"}
        out = FeatureTable(ctx.out_dir("embeddings"), table, meta).save()
        model = Model(model_dir, {"component": self.name, "backbone": p["backbone"], "pretrain": mode,
                                  "image_size": p["image_size"], "folds": fold_meta, "classes": classes}).save()
        if mode != "none":
            rows = [{"fold": f"{m['fold']} (refit)" if m.get("refit") else m["fold"], "epochs": len(m["history"]),
                     "best loss": round(m["best_loss"], 4)} for m in fold_meta]
            ctx.report.table(f"instance encoder pre-training ({mode}, {p['backbone']})", rows, section="MIL")
        return {"embeddings": out, "model": model}


COMPONENTS = (InstanceEncoder,)


@hookimpl
def register_feature_extractors(register: Any) -> None:
    for cls in COMPONENTS:
        register(cls)
