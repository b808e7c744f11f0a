"""Report figures of the classification evaluator: confusion matrices and ROC curves per level."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def confusion_figure(values: dict[str, Any], levels: list[str]) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6 * len(levels), 3.4))
    for i, lv in enumerate(levels):
        ax = fig.add_subplot(1, len(levels), i + 1)
        cm = np.array(values[lv]["confusion_matrix"]["matrix"])
        labels = values[lv]["confusion_matrix"]["labels"]
        ax.imshow(cm, cmap="Blues")
        for (r, c), v in np.ndenumerate(cm):
            ax.text(c, r, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{lv} (n={cm.sum()})")
    fig.tight_layout()
    return fig


def roc_figure(per_level: dict[str, pd.DataFrame], levels: list[str], classes: list[str]) -> Any:
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_auc_score, roc_curve

    fig = Figure(figsize=(3.8 * len(levels), 3.6))
    for i, lv in enumerate(levels):
        ax = fig.add_subplot(1, len(levels), i + 1)
        t = per_level[lv]
        y = t["y_true"].astype(str).to_numpy()
        shown = classes[1:] if len(classes) == 2 else classes
        for c in shown:
            pos = y == c
            if pos.all() or not pos.any():
                continue
            score = t[f"prob_{c}"].to_numpy(float)
            fpr, tpr, _ = roc_curve(pos, score)
            ax.plot(fpr, tpr, label=f"{c} (AUC {roc_auc_score(pos, score):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(lv)
        ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig
