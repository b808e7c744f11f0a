"""The one training loop shared by every neural component (classifiers, multi-modal, MIL).

Not a plugin module: components import it. It knows nothing about images; a data set is any
``torch.utils.data.Dataset`` whose items are dicts of tensors/numbers with an integer class
index under ``"y"``, and the caller says how a batch goes through the model (``forward``).

What :func:`fit` does: AdamW, linear warm-up then cosine decay (per step), optional label
smoothing, class weighting (``balanced`` loss weights) or a class-balanced sampler, gradient
clipping, mixed precision on CUDA, per-epoch validation, checkpoint selection and early stopping
on the **validation partition only** (the loop never sees test data: callers pass train and val
sets, nothing else), deterministic on CPU for a given seed.

Example::

    import torch
    from hemaflow.lib.training import TRAIN_SCHEMA, TensorDictDataset, fit, predict_proba, train_config

    x, y = torch.randn(40, 5), torch.arange(40) % 2
    train, val = TensorDictDataset(x=x[:30], y=y[:30]), TensorDictDataset(x=x[30:], y=y[30:])
    model = torch.nn.Linear(5, 2)
    cfg = train_config(epochs=3, batch_size=8, lr=1e-2)
    result = fit(model, train, val, forward=lambda m, b: m(b["x"]), config=cfg, ctx=ctx,
                 classes=["a", "b"], name="fold0")
    model.load_state_dict(result.best_state_dict)
    probs = predict_proba(model, val, forward=lambda m, b: m(b["x"]), config=cfg, device=ctx.device)
    result.history  # list of per-epoch dicts: epoch, lr, train_loss, val_loss, val_accuracy, ...

Components merge :data:`TRAIN_SCHEMA` into their own parameter schema
(``"properties": {**TRAIN_SCHEMA, ...}``) and pass their params through :func:`train_config`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypedDict

import numpy as np

from hemaflow.lib.augment import (  # noqa: F401  (moved there; imported from here too)
    AUGMENT_SCHEMA, Augment, AugmentConfig)
from hemaflow.lib.checkpoints import (  # noqa: F401  (moved there; imported from here too)
    load_checkpoint, recipe_hash, report_learning_curves, save_checkpoint, write_history)
from hemaflow.lib.tensor_data import (  # noqa: F401  (moved there; imported from here too)
    TensorDictDataset, class_weights, dataset_labels)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from hemaflow.core.component import RunContext


class TrainConfig(TypedDict, total=False):
    """Training options (all have defaults, see :data:`TRAIN_SCHEMA`)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    warmup_epochs: float
    schedule: str  # "cosine" | "constant"
    label_smoothing: float
    class_weighting: str  # "none" | "balanced" | "sampler"
    patience: int  # 0 = no early stopping
    select_metric: str  # "balanced_accuracy" | "loss"
    amp: bool
    grad_clip: float  # 0 = off
    num_workers: int
    threads: int
    augment: AugmentConfig


TRAIN_SCHEMA: dict[str, Any] = {
    "epochs": {"type": "integer", "minimum": 1, "default": 10, "description": "maximum training epochs"},
    "batch_size": {"type": "integer", "minimum": 1, "default": 16, "description": "training and prediction batch size"},
    "lr": {"type": "number", "exclusiveMinimum": 0, "default": 3e-4, "description": "peak AdamW learning rate"},
    "weight_decay": {"type": "number", "minimum": 0, "default": 0.05, "description": "AdamW weight decay"},
    "warmup_epochs": {"type": "number", "minimum": 0, "default": 1, "description": "linear learning-rate warm-up, in epochs"},
    "schedule": {"enum": ["cosine", "constant"], "default": "cosine",
                 "description": "learning rate after warm-up: cosine decay to 1% of lr, or constant"},
    "label_smoothing": {"type": "number", "minimum": 0, "maximum": 0.5, "default": 0.0,
                        "description": "cross-entropy label smoothing"},
    "class_weighting": {"enum": ["none", "balanced", "sampler"], "default": "balanced",
                        "description": "imbalance handling: none, loss weights n/(k*n_c), or a class-balanced sampler"},
    "patience": {"type": "integer", "minimum": 0, "default": 5,
                 "description": "stop after this many epochs without validation improvement (0 = never)"},
    "select_metric": {"enum": ["balanced_accuracy", "loss"], "default": "balanced_accuracy",
                      "description": "validation metric that picks the checkpoint (ties broken by validation loss)"},
    "amp": {"type": "boolean", "default": True, "description": "mixed precision (CUDA only; ignored on CPU)"},
    "grad_clip": {"type": "number", "minimum": 0, "default": 1.0, "description": "gradient norm clip (0 = off)"},
    "num_workers": {"type": "integer", "minimum": 0, "default": 0, "description": "DataLoader worker processes"},
    "threads": {"type": "integer", "minimum": 0, "default": 0,
                "description": "torch CPU threads while training (0 = torch's default); 1 is much faster on a busy "
                               "shared machine, where extra threads spin against other processes"},
    "augment": AUGMENT_SCHEMA,
}


def train_config(params: Mapping[str, Any] | None = None, /, **overrides: Any) -> TrainConfig:
    """Return a full :class:`TrainConfig`: schema defaults, then keys of ``params`` that are
    training options (others are ignored), then ``overrides``."""
    cfg: dict[str, Any] = {k: copy.deepcopy(v["default"]) for k, v in TRAIN_SCHEMA.items()}
    for src in (params or {}), overrides:
        for k, v in src.items():
            if k in TRAIN_SCHEMA:
                cfg[k] = copy.deepcopy(v)
    aug = dict(AUGMENT_SCHEMA["default"])
    aug.update(cfg.get("augment") or {})
    cfg["augment"] = aug
    return cfg  # type: ignore[return-value]


# -- the loop ----------------------------------------------------------------------------------
@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        best_state_dict: the selected checkpoint's weights (CPU tensors).
        best_epoch: 1-based epoch of that checkpoint.
        history: one dict per epoch: ``epoch, lr, train_loss, val_loss, val_accuracy,
            val_balanced_accuracy, seconds, selected`` (``selected`` marks the best so far).
        stopped_early: True when patience ended training before ``epochs``.
    """

    best_state_dict: dict[str, Any]
    best_epoch: int
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False

    def history_frame(self):
        import pandas as pd

        return pd.DataFrame(self.history)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), so model initialisation and augmentation repeat."""
    import torch

    torch.manual_seed(int(seed))


def _logits(output: Any) -> "torch.Tensor":
    if isinstance(output, Mapping):
        return output["logits"]
    if isinstance(output, (tuple, list)):
        return output[0]
    return output


def _to_device(batch: Any, device: str) -> Any:
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _autocast(device: str, amp: bool):
    import torch

    if amp and device.startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


def _lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)]
    return float(np.mean(recalls)) if recalls else float("nan")


def evaluate(model: Any, data: Any, *, forward: Callable, config: TrainConfig, device: str = "cpu",
             collate_fn: Callable | None = None) -> dict[str, float]:
    """Plain (unweighted, unsmoothed) cross-entropy, accuracy and balanced accuracy on ``data``."""
    probs, labels, loss = _predict(model, data, forward=forward, config=config, device=device,
                                   collate_fn=collate_fn, with_loss=True)
    pred = probs.argmax(1)
    return {"loss": float(loss), "accuracy": float(np.mean(pred == labels)) if len(labels) else float("nan"),
            "balanced_accuracy": balanced_accuracy(labels, pred)}


def _loader(data: Any, batch_size: int, *, shuffle: bool, generator: Any = None, sampler: Any = None,
            collate_fn: Callable | None = None, num_workers: int = 0, drop_last: bool = False):
    from torch.utils.data import DataLoader

    return DataLoader(data, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
                      generator=generator, collate_fn=collate_fn, num_workers=num_workers, drop_last=drop_last)


def _predict(model: Any, data: Any, *, forward: Callable, config: TrainConfig, device: str,
             collate_fn: Callable | None, with_loss: bool = False):
    import torch
    import torch.nn.functional as F

    model.eval()
    out, ys, total, n = [], [], 0.0, 0
    loader = _loader(data, int(config.get("batch_size", 16)), shuffle=False, collate_fn=collate_fn,
                     num_workers=int(config.get("num_workers", 0)))
    with torch.no_grad():
        for batch in loader:
            batch = _to_device(batch, device)
            with _autocast(device, bool(config.get("amp", False))):
                logits = _logits(forward(model, batch)).float()
            out.append(torch.softmax(logits, 1).cpu().numpy())
            if with_loss:
                y = batch["y"].long()
                total += float(F.cross_entropy(logits, y, reduction="sum"))
                n += len(y)
                ys.append(y.cpu().numpy())
    probs = np.concatenate(out) if out else np.zeros((0, 0))
    if with_loss:
        labels = np.concatenate(ys) if ys else np.zeros(0, dtype=int)
        return probs, labels, total / max(n, 1)
    return probs


def predict_proba(model: Any, data: Any, *, forward: Callable, config: TrainConfig | None = None,
                  device: str = "cpu", collate_fn: Callable | None = None) -> np.ndarray:
    """Return softmax probabilities (N, n_classes) for every item of ``data``, in order."""
    model.to(device)
    return _predict(model, data, forward=forward, config=config or train_config(), device=device,
                    collate_fn=collate_fn)


def fit(model: Any, train_data: Any, val_data: Any | None, *, forward: Callable, config: TrainConfig,
        ctx: "RunContext | None" = None, classes: Sequence[str] | None = None,
        loss_fn: Callable | None = None, collate_fn: Callable | None = None, name: str = "model",
        seed: int | None = None, device: str | None = None) -> FitResult:
    """Train ``model`` on ``train_data``; select the checkpoint on ``val_data``.

    Args:
        model: a ``torch.nn.Module`` (moved to the device; left holding the *last* weights).
        train_data: map-style data set of dict items with an int ``"y"``.
        val_data: validation data set (same item format) or None: then the last epoch is kept.
        forward: ``forward(model, batch) -> logits`` (or a tuple/dict whose first item /
            ``"logits"`` are the logits), batch already on the device.
        config: a :class:`TrainConfig` (see :func:`train_config`).
        ctx: the step's RunContext: progress, log lines, seed and device come from it.
        classes: class names; their number sizes the class weights (default: labels seen).
        loss_fn: ``loss_fn(output, batch) -> scalar``; default cross-entropy with the
            configured label smoothing and class weights.
        collate_fn: DataLoader collate function (e.g. for variable-size MIL bags).
        name: label for progress and log lines (e.g. ``"fold0"``).
        seed: overrides ``ctx.torch_seed(name)``.
        device: overrides ``ctx.device``.

    Returns:
        :class:`FitResult`.
    """
    cfg = train_config(config)
    with torch_threads(int(cfg.get("threads") or 0)):
        return _fit(model, train_data, val_data, forward=forward, cfg=cfg, ctx=ctx, classes=classes, loss_fn=loss_fn,
                    collate_fn=collate_fn, name=name, seed=seed, device=device)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Limit torch's CPU threads to ``n`` inside the block (``n <= 0``: leave them alone)."""
    import torch

    if n <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit(model: Any, train_data: Any, val_data: Any | None, *, forward: Callable, cfg: TrainConfig,
         ctx: "RunContext | None", classes: Sequence[str] | None, loss_fn: Callable | None,
         collate_fn: Callable | None, name: str, seed: int | None, device: str | None) -> FitResult:
    import torch
    import torch.nn.functional as F

    device = device or (ctx.device if ctx is not None else "cpu")
    if seed is None:
        seed = ctx.torch_seed("fit", name) if ctx is not None else 0
    seed_everything(seed)
    generator = torch.Generator().manual_seed(int(seed))
    amp = bool(cfg["amp"]) and device.startswith("cuda")

    labels = dataset_labels(train_data)
    n_classes = len(classes) if classes is not None else int(labels.max()) + 1
    if len(train_data) == 0:
        raise ValueError(f"{name}: the training partition is empty")
    weights = None
    sampler = None
    if cfg["class_weighting"] == "balanced":
        weights = torch.as_tensor(class_weights(labels, n_classes), dtype=torch.float32, device=device)
    elif cfg["class_weighting"] == "sampler":
        from torch.utils.data import WeightedRandomSampler

        w = class_weights(labels, n_classes)[labels]
        sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(labels), replacement=True,
                                        generator=generator)
    if loss_fn is None:
        smoothing = float(cfg["label_smoothing"])

        def loss_fn(output: Any, batch: Mapping[str, Any]) -> "torch.Tensor":
            return F.cross_entropy(_logits(output).float(), batch["y"].long(), weight=weights, label_smoothing=smoothing)

    bs = int(cfg["batch_size"])
    # drop a last batch of one: BatchNorm cannot train on it
    drop_last = len(train_data) % bs == 1 and len(train_data) > bs
    loader = _loader(train_data, bs, shuffle=True, generator=generator, sampler=sampler, collate_fn=collate_fn,
                     num_workers=int(cfg["num_workers"]), drop_last=drop_last)
    steps_per_epoch = max(1, len(loader))
    total_steps = steps_per_epoch * int(cfg["epochs"])
    warmup = int(round(float(cfg["warmup_epochs"]) * steps_per_epoch))

    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    # the fused kernel (CPU and CUDA) updates all parameters in one call: on small models the
    # per-parameter Python overhead dominates (MIL transformer: 2.8 ms -> 0.9 ms per step)
    fused = str(device).split(":")[0] in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": float(cfg["weight_decay"])},
                             {"params": no_decay, "weight_decay": 0.0}], lr=float(cfg["lr"]), fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _lr_factor(s, total_steps, warmup, str(cfg["schedule"])))
    scaler = torch.amp.GradScaler("cuda", enabled=amp and not torch.cuda.is_bf16_supported()) if amp else None

    history: list[dict[str, Any]] = []
    best_key: tuple[float, float] | None = None
    best_state: dict[str, Any] | None = None
    best_epoch, bad_epochs, stopped = 0, 0, False
    epochs = range(1, int(cfg["epochs"]) + 1)
    it = ctx.progress(epochs, total=len(epochs), description=f"train {name}") if ctx is not None else epochs
    for epoch in it:
        t0 = time.perf_counter()
        model.train()
        total, n = 0.0, 0
        lr = opt.param_groups[0]["lr"]
        for batch in loader:
            batch = _to_device(batch, device)
            with _autocast(device, amp):
                output = forward(model, batch)
                loss = loss_fn(output, batch)
            opt.zero_grad(set_to_none=True)
            if scaler is not None and scaler.is_enabled():
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if cfg["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(params, float(cfg["grad_clip"]))
            if scaler is not None and scaler.is_enabled():
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            k = len(batch["y"]) if isinstance(batch, Mapping) and "y" in batch else 1
            total += float(loss.detach()) * k
            n += k
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"{name}: training loss is {float(loss.detach())} at epoch {epoch}; "
                                         "lower lr or enable grad_clip")
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": total / max(n, 1)}
        if val_data is not None and len(val_data):
            ev = evaluate(model, val_data, forward=forward, config=cfg, device=device, collate_fn=collate_fn)
            row.update({"val_loss": ev["loss"], "val_accuracy": ev["accuracy"],
                        "val_balanced_accuracy": ev["balanced_accuracy"]})
            if cfg["select_metric"] == "loss":
                key = (-ev["loss"], 0.0)
            else:
                key = (ev["balanced_accuracy"], -ev["loss"])
        else:
            key = (float(epoch), 0.0)  # no validation data: the last epoch wins
        improved = best_key is None or key > best_key
        if improved:
            best_key, best_epoch, bad_epochs = key, epoch, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        row["seconds"] = round(time.perf_counter() - t0, 3)
        row["selected"] = bool(improved)
        history.append(row)
        if ctx is not None:
            msg = f"{name} epoch {epoch}: train_loss {row['train_loss']:.4f}"
            if "val_loss" in row:
                msg += f", val_loss {row['val_loss']:.4f}, val_bacc {row['val_balanced_accuracy']:.3f}"
            getattr(ctx, "debug", ctx.log)(msg + (" *" if improved else ""))
        if cfg["patience"] and bad_epochs >= int(cfg["patience"]) and epoch < int(cfg["epochs"]):
            stopped = True
            break
    assert best_state is not None
    return FitResult(best_state_dict=best_state, best_epoch=best_epoch, history=history, stopped_early=stopped)


