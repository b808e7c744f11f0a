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
from hemaflow.lib.backbones import create_backbone  # noqa: F401  (the one factory; imported from here too)
from hemaflow.plugins.splits import refit_epochs

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SCALE = (0.9, 1.1)  # augment: grid scale range (size in pixels is a morphology cue: keep it)
SHIFT = 0.1  # augment: largest shift, in half-crop units of affine_grid
FROZEN_UNUSED = ("epochs", "lr", "max_cells", "temperature", "projection_dim", "threads")  # unused with pretrain: none


def feature_dim(backbone, size: int) -> int:
    """Width of the backbone's pooled output at ``size`` px (timm's ``num_features`` is not
    always it: MobileNetV3 adds a head convolution)."""
    import torch

    was = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            return int(backbone(torch.zeros(1, 3, size, size)).shape[1])
    except RuntimeError as exc:
        raise DataError("<recipe>", f"the backbone cannot take {size} px inputs ({exc}); raise image_size") from None
    finally:
        backbone.train(was)


def crops_to_tensor(crops: Any, size: int):
    """uint8 (N,S,S,3) array or tensor -> float tensor (N,3,size,size) normalized with ImageNet
    statistics (on the tensor's device)."""
    import torch
    import torch.nn.functional as F

    x = crops if isinstance(crops, torch.Tensor) else torch.from_numpy(np.asarray(crops))
    mean, std = torch.from_numpy(MEAN).to(x.device), torch.from_numpy(STD).to(x.device)
    x = ((x.float() / 255.0 - mean) / std).permute(0, 3, 1, 2).contiguous()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


def stain_jitter(x, gen, sigma: float):
    """HED stain augmentation (Tellez et al., 2018) of an ImageNet-normalized batch (N,3,S,S).

    Per sample, the haematoxylin, eosin and DAB optical densities (colour deconvolution with
    scikit-image's matrix) are scaled by ``U(1 - sigma, 1 + sigma)`` and shifted by
    ``U(-sigma, sigma)``, then mapped back: another lab's stain strength and hue, the cell's shape
    untouched. ``sigma`` 0 returns ``x`` itself.
    """
    import torch
    from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

    if sigma <= 0:
        return x
    n = x.shape[0]
    mean = torch.as_tensor(MEAN, dtype=x.dtype).reshape(1, 3, 1, 1)
    std = torch.as_tensor(STD, dtype=x.dtype).reshape(1, 3, 1, 1)
    rgb = (x * std + mean).clamp(1e-6, 1.0)
    od = -torch.log(rgb).permute(0, 2, 3, 1)  # (N,S,S,3)
    hed = od @ torch.as_tensor(hed_from_rgb, dtype=x.dtype)
    alpha = 1 + (torch.rand(n, 1, 1, 3, generator=gen) * 2 - 1) * sigma
    beta = (torch.rand(n, 1, 1, 3, generator=gen) * 2 - 1) * sigma
    od = (hed * alpha.to(x.dtype) + beta.to(x.dtype)).clamp_min(0) @ torch.as_tensor(rgb_from_hed, dtype=x.dtype)
    rgb = torch.exp(-od).clamp(0, 1).permute(0, 3, 1, 2)
    return (rgb - mean) / std


def augment(x, gen, stain: float = 0.0):
    """Random flips, 90-degree rotations, small shifts and rescaling, colour jitter on a batch (N,3,S,S).

    Cell crops are cut with a fixed window (``cell_crops``), so a cell's size in pixels is part of
    its morphology (lymphoblast vs myeloblast vs small lymphocyte): the geometric part keeps it
    (scale 0.9-1.1, shift up to 5% of the crop width) instead of ImageNet's random resized crop, whose
    zoom of up to 1.7x wiped out that cue (synthetic smears, test_efficientnet, 10 weak epochs,
    seeds 0-2: image-only MIL patient accuracy 0.36 -> 0.45 on average, AUROC 0.66 -> 0.70).
    """
    import torch
    import torch.nn.functional as F

    n, _, s, _ = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, k, dims=(-2, -1))
    # small per-sample rescaling (0.9-1.1) and shift via an affine grid
    scale = SCALE[0] + (SCALE[1] - SCALE[0]) * torch.rand(n, generator=gen)
    shift = SHIFT * (torch.rand(n, 2, generator=gen) * 2 - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # colour jitter: brightness/contrast per sample and a small per-channel shift (stain)
    b = (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.6
    c = 1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.6
    ch = (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * 0.3
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return stain_jitter((x - m) * c + m + b + ch, gen, stain)


def nt_xent(z1, z2, temperature: float):
    """SimCLR's normalized temperature-scaled cross-entropy over 2N views."""
    import torch
    import torch.nn.functional as F

    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def embed(backbone, crops: np.ndarray, size: int, batch_size: int) -> np.ndarray:
    """Embeddings (N, D) of uint8 crops with the backbone in eval mode."""
    import torch

    backbone.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(crops), batch_size):
            out.append(backbone(crops_to_tensor(crops[i:i + batch_size], size)).numpy())
    dim = feature_dim(backbone, size) if not out else out[0].shape[1]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, dim), np.float32)


class CropDataset:
    """Crops (uint8, kept as stored) with labels for :func:`hemaflow.lib.training.fit`.

    With ``length`` smaller than the number of crops, each epoch draws ``length`` random crops
    (the ``max_cells`` cap); the draw changes every epoch.
    """

    def __init__(self, crops: np.ndarray, y: np.ndarray, rng: np.random.Generator, length: int = 0) -> None:
        self.crops, self.y, self.rng = crops, np.asarray(y, dtype=np.int64), rng
        self.length = length if 0 < length < len(crops) else len(crops)

    @property
    def labels(self) -> np.ndarray:
        return self.y if self.length == len(self.crops) else np.resize(self.y, self.length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = i if self.length == len(self.crops) else int(self.rng.integers(len(self.crops)))
        return {"crop": np.asarray(self.crops[j]), "y": int(self.y[j])}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {"crop": np.stack([it["crop"] for it in items]),
            "y": torch.tensor([it["y"] for it in items], dtype=torch.long)}


def pretrain_fold(backbone, crops: np.ndarray, y: np.ndarray | None, val_crops: np.ndarray, val_y: np.ndarray | None,
                  mode: str, params: dict[str, Any], seed: int, n_classes: int, ctx: RunContext | None = None,
                  name: str = "fold0") -> dict[str, Any]:
    """Pre-train ``backbone`` in place on one fold's training cells with the project's one
    training loop (:func:`hemaflow.lib.training.fit`); return the history.

    ``weak``: backbone + linear head, class-weighted cross-entropy, the checkpoint with the lowest
    loss on ``val_crops`` is kept. ``simclr``: backbone + projection head, NT-Xent between two
    augmented views; the last epoch is kept (no labels, no validation).
    """
    import torch
    from torch import nn

    from hemaflow.lib.training import fit, train_config

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    size = int(params["image_size"])
    dim = feature_dim(backbone, size)
    if mode == "weak":
        head = nn.Linear(dim, n_classes)
    else:
        head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, int(params["projection_dim"])))
    model = nn.Sequential(backbone, head)
    temperature = float(params["temperature"])
    stain = float(params.get("stain_jitter", 0.0))

    def forward(m, batch):
        x = crops_to_tensor(batch["crop"], size)
        if not m.training:
            return m(x)
        if mode == "weak":
            return m(augment(x, gen, stain))
        return m(augment(x, gen, stain)), m(augment(x, gen, stain))

    def simclr_loss(output, batch):
        return nt_xent(output[0], output[1], temperature)

    y_train = y if y is not None else np.zeros(len(crops), np.int64)
    train_ds = CropDataset(crops, y_train, rng, int(params["max_cells"]))
    val_ds = CropDataset(val_crops, val_y, rng) if mode == "weak" and val_y is not None and len(val_crops) else None
    cfg = train_config(epochs=int(params["epochs"]), batch_size=int(params["batch_size"]), lr=float(params["lr"]),
                       weight_decay=1e-4, warmup_epochs=0, select_metric="loss", amp=False,
                       class_weighting="balanced" if mode == "weak" else "none", patience=0)
    res = fit(model, train_ds, val_ds, forward=forward, config=cfg, ctx=ctx, classes=[str(i) for i in range(n_classes)],
              loss_fn=None if mode == "weak" else simclr_loss, collate_fn=_collate, name=f"pretrain {mode} {name}",
              seed=seed, device="cpu")
    model.load_state_dict(res.best_state_dict)
    best = res.history[res.best_epoch - 1]
    return {"history": res.history, "best_epoch": res.best_epoch,
            "best_loss": float(best.get("val_loss", best["train_loss"]))}


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
                                    len(classes), ctx=ctx, name="refit" if fold == refit else f"fold{fold}")
                info.update(best_loss=res["best_loss"], history=res["history"], best_epoch=res["best_epoch"])
            save_file({k: v.contiguous() for k, v in backbone.state_dict().items()},
                      str(model_dir / ("encoder.safetensors" if fold < 0 else f"fold{fold}.safetensors")))
            emb = embed(backbone, crops, int(p["image_size"]), int(p["batch_size"]))
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
