"""Fast settings for running hemaflow's built-in components in the conformance kit.

Like scikit-learn's ``_set_checking_parameters``: the schema defaults of a learned component
train for minutes, so the kit runs built-ins with tiny models and one or two epochs. Plugin
authors pass their own ``params=`` to :func:`hemaflow.testing.check_component` instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd

from hemaflow.core.component import Component
from hemaflow.core.validate import module_available

TRAIN = {"epochs": 1, "batch_size": 4, "patience": 0, "warmup_epochs": 0}
MIL = {"epochs": 2, "batch_size": 2, "patience": 0, "hidden": 8, "gallery_patients": 0}


def _field_files(root: Path, layout: str) -> dict[str, Any]:
    """Write a tiny folder data set (4 patients, 2 classes, 64 x 64 PNGs) in ``layout``."""
    from hemaflow.lib.imageio import write_png
    from hemaflow.testing.fixtures import smear_field

    rows = []
    for i in range(8):
        pid, label = f"p{i // 2}", ("ALL", "normal")[(i // 2) % 2]
        img, _ = smear_field(i, label == "ALL")
        sub = {"class": Path(label) / f"{pid}_{i}.png", "patient": Path(pid) / f"{i}.png",
               "manifest": Path("img") / f"{i}.png"}[layout]
        (root / sub).parent.mkdir(parents=True, exist_ok=True)
        write_png(root / sub, img)
        rows.append({"image": str(sub), "patient": pid, "label": label})
    if layout == "manifest":
        pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
        return {"path": str(root / "manifest.csv")}
    if layout == "patient":
        pd.DataFrame(rows).drop_duplicates("patient")[["patient", "label"]].to_csv(root / "labels.csv", index=False)
        return {"root": str(root), "labels": str(root / "labels.csv"), "label_column": "label"}
    return {"root": str(root)}


def _folder(layout: str) -> Callable[[Path], dict[str, Any]]:
    def params(root: Path) -> dict[str, Any]:
        root.mkdir(parents=True, exist_ok=True)
        return _field_files(root, layout)

    return params


def _trained_model(fx: Any) -> Any:
    """A Model from the sklearn classifier on the fixture features (input of ``apply_classifier``)."""
    from hemaflow.plugins.classify.tabular import SklearnClassifier
    from hemaflow.testing import make, make_context

    out = make(SklearnClassifier).run(make_context(fx.root / "trained-model"), features=fx.features, split=fx.split)
    return out["model"]


def _kit_bundle(root: Path) -> dict[str, Any]:
    from hemaflow.plugins.mil.apply import kit_params

    return kit_params(root)


# name -> (params or root -> params, inputs, reason the kit does not run it)
SETTINGS: dict[str, tuple[Any, dict[str, Any] | None, str | None]] = {
    "synthetic_smears": ({"patients_per_class": 2, "images_per_patient": 1, "image_size": 64}, None, None),
    "class_folders": (_folder("class"), None, None),
    "patient_folders": (_folder("patient"), None, None),
    "manifest": (_folder("manifest"), None, None),
    "bccd_fields": (None, None, "reads the BCCD data set from disk (tests/plugins/test_datasets.py runs it)"),
    "wbc_crops": (None, None, "reads the WBC crops data set from disk (tests/plugins/test_datasets.py runs it)"),
    "patient_kfold": ({"k": 2}, None, None),
    "deeplabv3": ({"encoder": "tu-test_resnet", "epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "crop_size": 32},
                  None, None),
    "sam": (None, None, "needs a Segment Anything checkpoint file (tests/plugins/test_segment.py checks its errors)"),
    "cell_crops": ({"crop_size": 16}, None, None),
    "whole_images": ({"crop_size": 16}, None, None),
    "patches": ({"crop_size": 16}, None, None),
    "single_cells": ({"crop_size": 16}, None, None),
    "embeddings": ({"model": "test_resnet", "batch_size": 8}, None, None),
    "instance_encoder": ({"backbone": "test_convnext", "image_size": 32, "batch_size": 8, "epochs": 1}, None, None),
    "radiomics": ({"classes": ["firstorder"]}, {"images": None, "masks": None}, None),
    "apply_classifier": ({}, {"model": _trained_model, "images": None, "cells": None, "masks": None}, None),
    "image_classifier": (dict(TRAIN, backbone="test_resnet", image_size=32), {"cells": None},
                         None),
    "multimodal": (dict(TRAIN, backbone="test_resnet", image_size=32), {"images": None, "masks": None}, None),
    "tabular_attention": (dict(TRAIN), None, None),
    "sklearn_classifier": ({}, None, None),
    "attention_mil": (dict(MIL), {"embeddings": None, "cells": None}, None),
    "gated_attention_mil": (dict(MIL), {"embeddings": None, "cells": None}, None),
    "transformer_mil": (dict(MIL), {"embeddings": None, "cells": None}, None),
    "mean_mil": (dict(MIL), {"embeddings": None, "cells": None}, None),
    "max_mil": (dict(MIL), {"embeddings": None, "cells": None}, None),
    "majority_vote_mil": (dict(MIL), {"embeddings": None, "cells": None}, None),
    "pooled_baseline": ({}, {"embeddings": None, "cells": None}, None),
    "apply_bundle": (_kit_bundle, {"embeddings": None, "cells": None}, None),
    "classification": ({"n_bootstrap": 20}, None, None),
    "cohort_shift": ({}, {"features": None}, None),
    "processes": ({"workers": 2}, None, None),
    "mlflow": (None, None, None if module_available("mlflow") else
               "needs MLflow, an optional dependency (pip install 'hemaflow[mlflow]'), which is not installed here"),
}


def settings_for(cls: type[Component]) -> tuple[Any, dict[str, Any] | None, str | None]:
    """The kit's (params, inputs, reason not to run) for a built-in component; empty for others."""
    if not str(getattr(cls, "__module__", "")).startswith("hemaflow.plugins"):
        return None, None, None
    return SETTINGS.get(getattr(cls, "name", ""), (None, None, None))


def heavy_data_skip(cls: type[Component]) -> str | None:
    """Why the kit does not run ``cls`` (needs data or files the machine may not have), or None."""
    return settings_for(cls)[2]

