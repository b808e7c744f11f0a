"""Patient-level splitters: stratified k-fold, hold-out, and a split taken from a column.

Every splitter works on patients, never on images: all images of a patient land in the same
partition of a fold. The result is a :class:`~hemaflow.plugins.artifacts.Split` (one row per
fold and patient, ``partition`` in ``train``/``val``/``test``) saved with a hash; the runner
exports it to ``split.csv`` and ``split.hash`` in the run directory.

Leak check: every split (including a user-given ``split`` column) is checked so that no
patient is in two partitions of one fold; a violation is a :class:`DataError` naming the patient.

When the data set has no patient ids (``meta["patients_are_images"]``, e.g. the real sets in
``../shared/data``), each image is its own patient; the Split's meta and the report say so, as
patient-level numbers are then image-level numbers.

Refit (``refit: true``, every splitter): besides its folds, the Split names one more fold
(``meta["refit_fold"]``, one past the last) whose training partition is every patient that some
fold trains or validates on; it has no validation and no test patient. Components that support
it (``instance_encoder``, the MIL aggregators, ``mil_baseline``) fit one more model on it after
the folds, for the epochs the folds chose on their validation patients (their median), so
``hemaflow export`` can ship a model of all the training data. A patient that is a test patient
in every fold (an external cohort of ``column_split``) is never part of it. ``folds()`` and the
evaluation are unchanged: the refit fold predicts nobody.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hemaflow.core.bases import Splitter as SplitterBase
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.core.markers import hookimpl
from hemaflow.plugins.artifacts import ImageSet, Split

SEED = {"type": ["integer", "null"], "minimum": 0, "default": None,
        "description": "seed for the shuffling; null uses the recipe's seed"}
VAL_FRACTION = {"type": "number", "minimum": 0, "maximum": 0.9, "default": 0.2,
                "description": "share of each training partition's patients (per class) moved to a "
                               "validation partition for early stopping and model selection; 0 for none"}
REFIT = {"type": "boolean", "default": False,
         "description": "also name a refit fold: every patient some fold trains or validates on (never a patient "
                        "that is test in every fold), fitted for the median of the folds' validation-chosen epochs; "
                        "`hemaflow export` then ships that model (docs/bundles.md). Metrics are unchanged"}


def patient_table(images: ImageSet) -> pd.DataFrame:
    """One row per patient with its label; a patient with two labels is a DataError."""
    t = images.table
    if len(t) == 0:
        raise DataError(images.path, "the data set is empty: no images to split")
    labels = t[["patient_id", "label"]].astype({"patient_id": str}).fillna({"label": ""})
    n_labels = labels.groupby("patient_id")["label"].nunique()
    bad = n_labels[n_labels > 1]
    if len(bad):
        pid = bad.index[0]
        found = sorted(labels.loc[labels["patient_id"] == pid, "label"].unique())
        raise DataError(images.path, f"patient {pid!r} has images with different labels {found}; "
                                     "a patient must have one diagnosis")
    return labels.drop_duplicates("patient_id").sort_values("patient_id").reset_index(drop=True)


def stratified_folds(patients: pd.DataFrame, k: int, rng: np.random.Generator) -> np.ndarray:
    """Assign each patient a fold 0..k-1, class by class (round-robin after a shuffle).

    Each class's patients are spread over the folds as evenly as possible; the fold that gets
    the first patient of a class rotates, so the folds' totals stay balanced too.
    """
    fold = np.zeros(len(patients), dtype=int)
    start = 0
    for label in sorted(patients["label"].unique()):
        idx = np.flatnonzero(patients["label"].to_numpy() == label)
        idx = idx[rng.permutation(len(idx))]
        fold[idx] = (start + np.arange(len(idx))) % k
        start = (start + len(idx)) % k
    return fold


def stratified_take(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Return a boolean mask selecting about ``fraction`` of each class (largest remainder).

    A class with at least two members gives at least one when ``fraction > 0``; a class with a
    single member stays where it is (it cannot be split).
    """
    take = np.zeros(len(labels), dtype=bool)
    if fraction <= 0:
        return take
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        n = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        else:
            n = 0
        take[idx[rng.permutation(len(idx))[:n]]] = True
    return take


def refit_epochs(chosen: list[int]) -> int:
    """Epochs of a refit: the median (rounded half up, at least 1) of the epochs the folds chose
    on their validation patients."""
    if not chosen:
        raise ValueError("a refit needs at least one fold's chosen epoch")
    return max(1, int(np.floor(float(np.median(chosen)) + 0.5)))


def _finish(ctx: RunContext, images: ImageSet, table: pd.DataFrame, meta: dict[str, Any]) -> Split:
    labels = patient_table(images).set_index("patient_id")["label"]
    table = table.copy()
    table["patient_id"] = table["patient_id"].astype(str)
    table["label"] = table["patient_id"].map(labels).fillna("")
    table = table.sort_values(["fold", "partition", "patient_id"]).reset_index(drop=True)
    pai = bool(images.meta.get("patients_are_images", False))
    meta = dict(meta, patients_are_images=pai, classes=images.classes)
    if meta.pop("refit", False):
        meta["refit_fold"] = int(table["fold"].max()) + 1
    split = Split(ctx.out_dir("split"), table[["fold", "patient_id", "partition", "label"]], meta)
    leak_check(split, images)
    split.save()
    rows = []
    for (fold, part), g in split.table.groupby(["fold", "partition"]):
        row = {"fold": int(fold), "partition": part, "patients": len(g)}
        row.update({c: int((g["label"] == c).sum()) for c in images.classes})
        rows.append(row)
    ctx.report.table(f"Split ({meta['kind']}, hash {split.meta['hash']})", rows, section="data")
    refit = split.refit_fold()
    if refit is not None:
        n = len(split.patients(refit, "train"))
        if not n:
            raise DataError(images.path, "refit: true, but no patient is in a training or validation partition")
        ctx.report.text("Refit", f"refit: true: fold {refit} trains one more model on {n} patients (every patient "
                                 f"some fold trains or validates on), for the median of the folds' validation-chosen "
                                 f"epochs; it predicts nobody and is what `hemaflow export` ships.", section="data")
    if pai:
        ctx.report.text("Patients are images",
                        "This data set has no patient identifiers: each image is treated as its own "
                        "patient, so patient-level results here are image-level results and images of "
                        "one real patient may sit on both sides of a split.", section="data")
    return split


def leak_check(split: Split, images: ImageSet | None = None) -> None:
    """Raise DataError if a patient is in two partitions of one fold (names the patient)."""
    try:
        split.check()
    except ValueError as exc:
        raise DataError(images.path if images is not None else split.path, str(exc)) from None


def _schema(props: dict[str, Any]) -> dict[str, Any]:
    """A splitter's parameter schema: ``props`` then ``seed``, unknown keys rejected."""
    return {"type": "object", "properties": {**props, "seed": SEED, "refit": REFIT}, "additionalProperties": False}


class Splitter(SplitterBase):
    """Base of the splitters: an ImageSet in, a Split out, a seed parameter."""

    kind = "splitter"
    inputs = {"images": "ImageSet"}
    outputs = {"split": "Split"}

    def resolved_seed(self, ctx: RunContext) -> int:
        """The ``seed`` parameter, or the recipe's seed when it is null."""
        return int(self.params["seed"] if self.params["seed"] is not None else ctx.seed)

    def cache_params(self) -> dict[str, Any]:
        """The parameters in the cache key; ``refit: false`` is left out (the key of splits from
        before the option)."""
        params = dict(self.params)
        if not params.get("refit"):
            params.pop("refit", None)
        return params


class PatientKFold(Splitter):
    """Stratified k-fold over patients, with a validation share carved from each training fold.

    Fold ``f`` tests on the patients of fold ``f``; of the others, ``val_fraction`` per class
    become ``val`` and the rest ``train``.
    """

    name = "patient_kfold"
    version = "1"
    schema = _schema({
        "k": {"type": "integer", "minimum": 2, "maximum": 100, "default": 5, "description": "number of folds"},
        "val_fraction": VAL_FRACTION,
        "stratify": {"type": "boolean", "default": True,
                     "description": "keep each class's share about equal in every fold"},
    })

    def run(self, ctx: RunContext, images: ImageSet) -> dict[str, Any]:
        p = self.params
        pats = patient_table(images)
        k = int(p["k"])
        if len(pats) < k:
            raise DataError(images.path, f"{len(pats)} patient(s) cannot make {k} folds; lower k "
                                         f"(e.g. --set steps.{ctx.step_id}.with.k={max(2, len(pats))})")
        seed = self.resolved_seed(ctx)
        rng = np.random.default_rng([seed, 101])
        strat = pats if p["stratify"] else pats.assign(label="")
        small = strat["label"].value_counts()
        small = small[small < k]
        if p["stratify"] and len(small):
            ctx.warn(f"class(es) {', '.join(f'{c} ({n})' for c, n in small.items())} have fewer patients "
                     f"than folds ({k}): some test folds have none of them")
        fold_of = stratified_folds(strat, k, rng)
        rows = []
        labels = pats["label"].to_numpy()
        for f in range(k):
            test = fold_of == f
            train_idx = np.flatnonzero(~test)
            val = np.zeros(len(pats), dtype=bool)
            val[train_idx[stratified_take(labels[train_idx], float(p["val_fraction"]), rng)]] = True
            part = np.where(test, "test", np.where(val, "val", "train"))
            rows.append(pd.DataFrame({"fold": f, "patient_id": pats["patient_id"], "partition": part}))
        split = _finish(ctx, images, pd.concat(rows), {"kind": "patient_kfold", "n_folds": k, "seed": seed,
                                                              "refit": p["refit"]})
        return {"split": split}


class Holdout(Splitter):
    """One train/validation/test partition of the patients, stratified by class (fold 0)."""

    name = "holdout"
    version = "1"
    schema = _schema({
        "train": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.6,
                  "description": "share of patients for training"},
        "val": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2,
                "description": "share of patients for validation"},
        "test": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.2,
                 "description": "share of patients for testing"},
        "stratify": {"type": "boolean", "default": True, "description": "split each class separately"},
    })

    def run(self, ctx: RunContext, images: ImageSet) -> dict[str, Any]:
        p = self.params
        total = p["train"] + p["val"] + p["test"]
        if abs(total - 1.0) > 1e-6:
            raise DataError(f"step {ctx.step_id}", f"train + val + test must be 1; got {p['train']} + "
                                                   f"{p['val']} + {p['test']} = {total:g}")
        pats = patient_table(images)
        seed = self.resolved_seed(ctx)
        rng = np.random.default_rng([seed, 202])
        labels = pats["label"].to_numpy() if p["stratify"] else np.zeros(len(pats), dtype=int)
        part = np.full(len(pats), "train", dtype=object)
        for label in np.unique(labels):
            idx = np.flatnonzero(labels == label)
            idx = idx[rng.permutation(len(idx))]
            counts = _largest_remainder(len(idx), [p["train"], p["val"], p["test"]])
            part[idx[counts[0]:counts[0] + counts[1]]] = "val"
            part[idx[counts[0] + counts[1]:]] = "test"
        table = pd.DataFrame({"fold": 0, "patient_id": pats["patient_id"], "partition": part})
        for name in ("train", "test"):
            if p[name] > 0 and not (table["partition"] == name).any():
                ctx.warn(f"the {name} partition is empty ({len(pats)} patients)")
        split = _finish(ctx, images, table, {"kind": "holdout", "n_folds": 1, "seed": seed,
                                              "fractions": [p["train"], p["val"], p["test"]], "refit": p["refit"]})
        return {"split": split}


def _largest_remainder(n: int, fractions: list[float]) -> list[int]:
    raw = np.array(fractions, dtype=float) * n
    counts = np.floor(raw).astype(int)
    rest = n - counts.sum()
    for i in np.argsort(-(raw - counts), kind="stable")[:rest]:
        counts[i] += 1
    return [int(c) for c in counts]


class ColumnSplit(Splitter):
    """A partition taken from a column of the data set (e.g. ``split``, ``site``, ``cohort``).

    ``mapping`` says which column values are train, val or test: e.g. ``{site1: train, site2:
    test}`` trains on one site and tests on another (external validation). Values not in the
    mapping are an error, or dropped with ``unmapped: drop``. When no value maps to ``val``,
    ``val_fraction`` of the training patients (per class) become validation patients.
    """

    name = "column_split"
    version = "1"
    schema = _schema({
        "column": {"type": "string", "default": "split", "description": "the ImageSet column to read"},
        "mapping": {"type": "object", "additionalProperties": {"enum": ["train", "val", "test"]},
                    "default": {"train": "train", "val": "val", "valid": "val", "validation": "val",
                                "test": "test"},
                    "description": "column value -> partition (train, val or test)"},
        "unmapped": {"enum": ["error", "drop"], "default": "error",
                     "description": "what to do with a value the mapping does not name"},
        "val_fraction": dict(VAL_FRACTION, default=0.0),
    })

    def run(self, ctx: RunContext, images: ImageSet) -> dict[str, Any]:
        p = self.params
        t = images.table
        col = p["column"]
        if col not in t.columns:
            extra = [c for c in t.columns if c not in ("image_id", "patient_id", "label", "path", "mask_path")]
            raise DataError(images.path, f"the data set has no column {col!r} to split on; "
                                         f"its extra columns are {extra or 'none'}")
        values = t[col].astype("string")
        mapping = {str(k): v for k, v in p["mapping"].items()}
        part = values.map(mapping)
        missing = part.isna()
        if missing.any():
            bad = sorted(set(values[missing].fillna("<empty>")))
            if p["unmapped"] == "error":
                raise DataError(images.path, f"column {col!r} has value(s) {bad[:5]} that the mapping "
                                             f"{mapping} does not assign to train/val/test (set unmapped: drop "
                                             "to leave those images out)")
            ctx.warn(f"column {col!r}: {int(missing.sum())} image(s) with value(s) {bad[:5]} dropped (unmapped)")
        per_image = pd.DataFrame({"patient_id": t["patient_id"].astype(str), "image_id": t["image_id"],
                                  "partition": part})[~missing]
        if per_image.empty:
            raise DataError(images.path, f"no image of column {col!r} maps to a partition")
        n_parts = per_image.groupby("patient_id")["partition"].nunique()
        leaking = n_parts[n_parts > 1]
        if len(leaking):
            pid = leaking.index[0]
            sub = per_image[per_image["patient_id"] == pid]
            where = "; ".join(f"{part}: {', '.join(map(str, g['image_id'].head(3)))}"
                              for part, g in sub.groupby("partition"))
            raise DataError(images.path, f"patient leak in column {col!r}: patient {pid!r} has images in "
                                         f"{' and '.join(sorted(sub['partition'].unique()))} ({where}); "
                                         f"{len(leaking)} patient(s) in all. All images of a patient must be "
                                         "in one partition")
        table = per_image.drop_duplicates("patient_id")[["patient_id", "partition"]].assign(fold=0)
        seed = self.resolved_seed(ctx)
        if p["val_fraction"] > 0 and not (table["partition"] == "val").any():
            labels = patient_table(images).set_index("patient_id")["label"]
            train_idx = np.flatnonzero(table["partition"].to_numpy() == "train")
            lab = table["patient_id"].map(labels).to_numpy()[train_idx]
            take = stratified_take(lab, float(p["val_fraction"]), np.random.default_rng([seed, 303]))
            part_arr = table["partition"].to_numpy().copy()
            part_arr[train_idx[take]] = "val"
            table["partition"] = part_arr
        for name in ("train", "test"):
            if not (table["partition"] == name).any():
                ctx.warn(f"column {col!r} gives no {name} patients")
        split = _finish(ctx, images, table, {"kind": "column_split", "n_folds": 1, "column": col,
                                              "mapping": mapping, "seed": seed, "refit": p["refit"]})
        return {"split": split}


@hookimpl
def register_splitters(register: Any) -> None:
    register(PatientKFold)
    register(Holdout)
    register(ColumnSplit)
