"""A hemaflow splitter: one seeded, class-stratified holdout of patients."""

from __future__ import annotations

import pandas as pd

from hemaflow import Splitter, hookimpl
from hemaflow.plugins.artifacts import ImageSet, Split


class TemplateComponent(Splitter):
    """Holdout of patients, stratified by class: fold 0 with train, val and test partitions.

    Input ``images: ImageSet``; output ``split: Split`` (one row per patient). Every class puts
    about ``test_fraction`` of its patients in test and ``val_fraction`` in val.
    """

    name = "template_component"
    version = "1"
    schema = {
        "type": "object",
        "properties": {
            "test_fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1, "default": 0.34},
            "val_fraction": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "default": 0.33},
        },
        "additionalProperties": False,
    }

    def run(self, ctx, images: ImageSet):
        patients = images.table.groupby("patient_id", sort=True)["label"].first()
        rows = []
        for label, group in patients.groupby(patients, sort=True):
            ids = sorted(group.index.astype(str))
            order = ctx.rng("split", str(label)).permutation(len(ids))  # seeded: the same split every run
            n_test = max(1, round(len(ids) * float(self.params["test_fraction"]))) if len(ids) > 1 else 0
            n_val = round(len(ids) * float(self.params["val_fraction"])) if len(ids) > n_test + 1 else 0
            for rank, j in enumerate(order):
                part = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
                rows.append({"fold": 0, "patient_id": ids[j], "partition": part})
        meta = {"kind": self.name, "n_folds": 1, "patients_are_images": bool(images.meta.get("patients_are_images"))}
        return {"split": Split(ctx.out_dir("split"), pd.DataFrame(rows), meta).save()}


@hookimpl
def register_splitters(register):
    register(TemplateComponent)
