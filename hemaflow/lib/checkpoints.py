"""Checkpoints (safetensors with metadata), the recipe hash stored in them, and learning curves
(history.csv and the report figure) of the training loop."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from hemaflow.core.component import RunContext


# -- checkpoints and learning curves -------------------------------------------------------------
def recipe_hash(recipe: Mapping[str, Any] | None) -> str:
    """Short hash of a resolved recipe (stored in checkpoints to tie weights to their recipe)."""
    text = json.dumps(recipe or {}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_checkpoint(path: Path | str, state_dict: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``state_dict`` as safetensors; ``metadata`` values are stored JSON-encoded.

    Callers put ``recipe_hash`` (see :func:`recipe_hash`), ``component``, ``params``,
    ``classes`` and ``epoch`` in the metadata.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {str(k): json.dumps(v, default=str) for k, v in (metadata or {}).items()}
    save_file(tensors, str(path), metadata=meta)
    return path


def load_checkpoint(path: Path | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(state_dict, metadata)`` of a checkpoint written by :func:`save_checkpoint`."""
    from safetensors import safe_open

    from hemaflow.core.errors import DataError

    path = Path(path)
    if not path.exists():
        raise DataError(path, "checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a bad file
        raise DataError(path, f"not a readable safetensors checkpoint ({exc})") from None
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return state, meta


def write_history(path: Path | str, histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path:
    """Write per-epoch learning curves of several fits (``{"fold0": history, ...}``) to CSV
    with a leading ``run`` column."""
    import pandas as pd

    frames = [pd.DataFrame(list(h)).assign(run=name) for name, h in histories.items() if len(h)]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["run", "epoch"])
    cols = ["run"] + [c for c in df.columns if c != "run"]
    path = Path(path)
    df[cols].to_csv(path, index=False)
    return path


def report_learning_curves(ctx: "RunContext", histories: Mapping[str, Sequence[Mapping[str, Any]]],
                           title: str = "Learning curves") -> None:
    """Add a figure (train/val loss and val balanced accuracy per epoch) to ``ctx.report``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, hist in histories.items():
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        line, = axes[0].plot(ep, [h["train_loss"] for h in hist], label=f"{name} train")
        if "val_loss" in hist[0]:
            axes[0].plot(ep, [h["val_loss"] for h in hist], "--", color=line.get_color(), label=f"{name} val")
            axes[1].plot(ep, [h["val_balanced_accuracy"] for h in hist], color=line.get_color(), label=name)
            best = [h["epoch"] for h in hist if h.get("selected")]
            if best:
                b = best[-1]
                axes[1].plot([b], [hist[b - 1]["val_balanced_accuracy"]], "o", color=line.get_color())
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("val balanced accuracy")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    ctx.report.figure(title, fig, caption="dots: selected checkpoint (validation partition only)")
