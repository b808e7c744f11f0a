"""What every data-set reader shares: schema pieces, the listing, validation and the ImageSet.

:class:`FileDataset` is the base of the file readers (:mod:`.folders`, :mod:`.real_data`):
a subclass lists its records (:class:`Listing`, no pixels read), and the base makes their paths
absolute, validates them (``validate``: auto, header or full, in ``ctx.map`` chunks; every level
decodes every mask with the data set's ``mask_spec``, so a bad mask is refused in the data step,
before anything else runs), applies ``on_error``, checks ids and classes and writes the
:class:`~hemaflow.plugins.artifacts.ImageSet`.

The data step is where ``on_error`` is decided for bad files: what it refuses is listed in
``meta["skipped"]`` and ``skipped.parquet`` beside the ImageSet (:data:`SKIPPED_COLUMNS`: file,
reason, step), counted in the report, and never reaches a later step. Files the listing left out
as not images (``Thumbs.db``, ``.DS_Store``, ``._*``...) are counted in ``meta["ignored_files"]``
and warned about, never an error.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from hemaflow.core.bases import Dataset
from hemaflow.core.component import RunContext
from hemaflow.core.errors import DataError
from hemaflow.lib import imageio as io
from hemaflow.plugins.artifacts import ImageSet

# -- shared schema pieces ---------------------------------------------------------------------------
ON_ERROR = {"enum": ["skip", "stop"], "default": "stop",
            "description": "what to do with a bad image, mask or row: skip it (recorded in the report "
                           "and provenance) or stop with an error naming the file"}
#: ``validate: auto`` decodes an image fully when it has at most this many pixels (1 Mpx: single-cell
#: crops and 640x480 fields, 0.06-1.4 ms each); larger ones get the header check only.
AUTO_FULL_PIXELS = 1 << 20
VALIDATE = {"enum": ["none", "header", "auto", "full"], "default": "auto",
            "description": "up-front checks, so a bad file is refused before any later step runs: none; "
                           "header (open each image without decoding it, decode each mask with mask_spec: "
                           "catches unreadable files, image/mask size mismatches and mask values or colours "
                           "the spec does not map; images cost ~0.05 ms each, masks a few ms); full (also "
                           "decode every image: catches truncated images; ~0.6 ms for a 360 px JPEG crop, "
                           "~1.4 ms for a 640x480 JPEG field); auto (full for images of at most 1 Mpx, "
                           "header for larger ones)"}
#: Columns of ``skipped.parquet`` (and keys of ``meta["skipped"]``): what a step left out and why.
SKIPPED_COLUMNS = ["file", "reason", "step"]
_INTS = {"type": "array", "items": {"type": "integer", "minimum": 0}}
_RGB = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}, "minItems": 3, "maxItems": 3,
        "description": "an RGB colour [r, g, b]"}
_COLOURS = {"type": "array", "items": _RGB, "description": "colors mode: the RGB colours [[r, g, b], ...] of this class"}
MASK_SPEC = {
    "type": "object",
    "description": "how stored mask values map to background / cytoplasm / nucleus "
                   "(see hemaflow.lib.imageio.read_mask)",
    "properties": {
        "mode": {"enum": ["binary", "threshold", "values", "canonical", "colors"], "default": "binary",
                 "description": "binary: value > threshold is cell; threshold: value > cell is cell, "
                                "value > nucleus is nucleus; values: exact values listed; canonical: "
                                "already 0 background / 1 cytoplasm / 2 nucleus; colors: colour-coded RGB "
                                "masks, a list of colours per class"},
        "threshold": {"type": "integer", "minimum": 0, "description": "binary mode: values above are cell (default 0)"},
        "cell": {"type": "integer", "minimum": 0, "description": "threshold mode: values above are cell"},
        # value shapes depend on the mode: checked by if/then/else below (one message per problem)
        "nucleus": {"description": "threshold mode: values above are nucleus (null: none); "
                                   "values mode: the list of nucleus values; colors mode: the nucleus colours"},
        "background": {"description": "values mode: background values (default [0]); colors mode: background "
                                      "colours (default [[0, 0, 0]])"},
        "cytoplasm": {"description": "values mode: cytoplasm values; colors mode: cytoplasm colours"},
        "tolerance": {"type": "number", "minimum": 0, "maximum": 442,
                      "description": "colors mode: a stored colour within this Euclidean RGB distance of a "
                                     "listed colour takes its class (default: half the smallest distance between two "
                                     "classes' colours, e.g. 127.5 for white/blue/cyan; survives JPEG compression)"},
        "strict": {"type": "boolean",
                   "description": "values mode: any other value is an error (default) or counts as cytoplasm; "
                                  "colors mode: a colour farther than tolerance from every listed colour is an "
                                  "error (default) or takes the nearest colour's class"},
    },
    # colours only in colors mode, plain values only outside it: a wrong spec fails validation
    "if": {"properties": {"mode": {"const": "colors"}}, "required": ["mode"]},
    "then": {"properties": {"background": _COLOURS, "cytoplasm": _COLOURS, "nucleus": _COLOURS}},
    "else": {"properties": {"background": _INTS, "cytoplasm": _INTS,
                            "nucleus": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}, _INTS]}}},
    "additionalProperties": False,
    "default": {"mode": "binary"},
}
CLASSES = {"type": ["array", "null"], "items": {"type": "string"}, "uniqueItems": True, "default": None,
           "description": "class names in order; a label outside the list is a bad row; null: the sorted "
                          "labels found"}
IMAGE_EXTENSIONS = io.IMAGE_EXTENSIONS


def _schema(props: dict[str, Any]) -> dict[str, Any]:
    """A parameter schema: an object of ``props`` that rejects unknown keys."""
    return {"type": "object", "properties": props, "additionalProperties": False}


# -- readers: common machinery --------------------------------------------------------------------
class Listing:
    """What a reader found, before any pixel is read: records plus problems found while listing.

    A record is a dict with ``image`` (Path), ``mask`` (Path or None), ``patient``, ``label``,
    ``image_id``, ``source`` (what to name in an error: the file, or ``manifest.csv:12``) and any
    extra columns (``split``, ``site``...).

    ``ignored`` lists the files (and folders) left out as not images (see
    :func:`hemaflow.lib.imageio.list_images`): counted and warned about, not errors.
    """

    def __init__(self, records: list[dict[str, Any]], problems: list[tuple[str, str]],
                 extra_files: Iterable[Path] = (), patients_are_images: bool = False,
                 ignored: Iterable[Path] = ()) -> None:
        self.records = records
        self.problems = problems
        self.extra_files = [Path(f) for f in extra_files]
        self.patients_are_images = patients_are_images
        self.ignored = [Path(f) for f in ignored]


def _check_item(rec: dict[str, Any], validate: str, mask_spec: dict[str, Any] | None) -> tuple[str, str] | None:
    """Return None if the image (and mask) pass the ``validate`` level, else (file, problem).

    Every level decodes the mask with ``mask_spec`` (masks are small and a bad one would
    otherwise be found only by the step that scores against it); ``header`` reads only the
    image's header, ``full`` decodes the image, ``auto`` decodes it when it has at most
    :data:`AUTO_FULL_PIXELS` pixels.
    """
    try:
        if validate == "full":
            size = io.decode_check(rec["image"])
        elif validate == "auto":
            size = io.decode_check(rec["image"], max_pixels=AUTO_FULL_PIXELS)
        else:
            size = io.image_size(rec["image"])
        if rec.get("mask") is not None:
            msize = io.read_mask(rec["mask"], mask_spec).shape[:2]
            if tuple(msize) != tuple(size):
                return str(rec["mask"]), (f"mask is {msize[1]}x{msize[0]} but its image {rec['image']} is "
                                          f"{size[1]}x{size[0]} (width x height)")
    except DataError as exc:
        return exc.path, exc.problem
    return None


def _check_chunk(args: tuple[list[dict[str, Any]], str, dict[str, Any] | None]) -> list[tuple[str, str] | None]:
    recs, validate, spec = args
    return [_check_item(r, validate, spec) for r in recs]


class FileDataset(Dataset):
    """Base of the readers: list -> validate -> apply ``on_error`` -> ImageSet (paths absolute).

    Subclasses implement :meth:`listing`. Relative paths in parameters are relative to the
    current working directory (where ``hemaflow run`` is started); the listing's image and mask
    paths are made absolute here (lexically, links kept), so the ImageSet never holds a path
    relative to the working directory, which a later step would resolve against the artifact
    folder (see :meth:`~hemaflow.plugins.artifacts.ImageSet.resolve`).
    """

    kind = "dataset"
    inputs: dict[str, str] = {}
    outputs = {"images": "ImageSet"}
    default_mask_spec: dict[str, Any] | None = None
    chunk = 256
    root_param: str | None = None  # the parameter naming the data's file or folder (errors name it)

    def listing(self) -> Listing:
        raise NotImplementedError

    def root_for_errors(self) -> str:
        return str(self.params[self.root_param]) if self.root_param else "data set"

    def _listing(self) -> Listing:
        if getattr(self, "_listing_", None) is None:
            lst = self.listing()
            for r in lst.records:  # absolute before the fingerprint: it hashes the path strings
                r["image"] = Path(os.path.abspath(r["image"]))
                if r.get("mask") is not None:
                    r["mask"] = Path(os.path.abspath(r["mask"]))
            lst.extra_files = [Path(os.path.abspath(f)) for f in lst.extra_files]
            self._listing_ = lst
        return self._listing_

    def check_params(self) -> list[tuple[str, str]]:
        """Problems of ``mask_spec`` that JSON Schema cannot see (see :func:`io.check_mask_spec`)."""
        return [("/mask_spec" + ptr, msg) for ptr, msg in io.check_mask_spec(self.params.get("mask_spec"))]

    def mask_spec(self) -> dict[str, Any] | None:
        spec = self.params.get("mask_spec") or self.default_mask_spec
        return {k: v for k, v in spec.items() if v is not None or k == "nucleus"} if spec else None

    def fingerprint(self) -> str:
        """Hash of the side files' content (labels, manifest, split lists: small, so hashed) and of
        every image's and mask's path, size and modification time (no pixel data)."""
        from hemaflow.core.filehash import path_sha256

        lst = self._listing()
        h = hashlib.sha256()
        for f in lst.extra_files:
            h.update(f"{f}|{path_sha256(f) if f.is_file() else 'missing'}\n".encode())
        for r in lst.records:
            h.update(io.file_stamp(r["image"]).encode() + b"\n")
            if r.get("mask") is not None:
                h.update(io.file_stamp(r["mask"]).encode() + b"\n")
        return h.hexdigest()[:32]

    def _ignored(self, ctx: RunContext, lst: Listing) -> dict[str, int]:
        """Count the listing's ignored files by kind (``{"Thumbs.db": 2, ...}``) and warn once."""
        if not lst.ignored:
            return {}
        counts = Counter(io.ignored_kind(f) for f in lst.ignored)
        kinds = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        ctx.warn(f"ignored {len(lst.ignored)} file(s) that are not images: "
                 + ", ".join(f"{k} {n}" for k, n in kinds.items()) + f" (e.g. {lst.ignored[0]})")
        return kinds

    def run(self, ctx: RunContext) -> dict[str, Any]:
        p = self.params
        lst = self._listing()
        skipped: list[dict[str, str]] = []

        def bad(file: str, reason: str) -> None:
            if p.get("on_error", "stop") == "stop":
                raise DataError(file, reason + " (set on_error: skip to leave it out)")
            skipped.append({"file": str(file), "reason": reason, "step": ctx.step_id})
            ctx.warn(f"skipped {file}: {reason}")

        ignored = self._ignored(ctx, lst)

        for file, reason in lst.problems:
            bad(file, reason)
        records = lst.records
        classes = p.get("classes")
        if classes:
            keep = []
            for r in records:
                if r["label"] in classes:
                    keep.append(r)
                else:
                    bad(r["source"], f"label {r['label']!r} is not in the class list {list(classes)}")
            records = keep
        validate = p.get("validate", "auto")
        if validate != "none" and records:
            spec = self.mask_spec()
            chunks = [(records[i:i + self.chunk], validate, spec) for i in range(0, len(records), self.chunk)]
            results = [x for xs in ctx.map(_check_chunk, chunks, description=f"checking {len(records)} images")
                       for x in xs]
            keep = []
            for r, err in zip(records, results):
                if err is None:
                    keep.append(r)
                else:
                    bad(*err)
            records = keep
        if not records:
            raise DataError(self.root_for_errors(), "the data set is empty: no usable images found"
                            + (f" ({len(skipped)} skipped)" if skipped else ""))
        ids = pd.Series([r["image_id"] for r in records])
        dup = ids[ids.duplicated()]
        if len(dup):
            first = [r for r in records if r["image_id"] == dup.iloc[0]]
            raise DataError(first[1]["source"], f"image id {dup.iloc[0]!r} appears twice "
                                                f"(also {first[0]['source']})")
        extra_cols = sorted({k for r in records for k in r} - {"image", "mask", "patient", "label", "image_id", "source"})
        rows = []
        for r in records:
            row = {"image_id": r["image_id"], "patient_id": str(r["patient"]), "label": r["label"],
                   "path": str(r["image"]), "mask_path": str(r["mask"]) if r.get("mask") is not None else None}
            row.update({c: r.get(c) for c in extra_cols})
            rows.append(row)
        table = pd.DataFrame(rows).sort_values("image_id", kind="stable").reset_index(drop=True)
        if not table["mask_path"].notna().any():
            table = table.drop(columns="mask_path")
        if not classes:
            classes = sorted(x for x in table["label"].unique() if x != "")
        empty = [c for c in classes if not (table["label"] == c).any()]
        if empty:
            ctx.warn(f"class(es) {empty} of the class list have no images")
        meta = {"classes": list(classes), "mask_spec": self.mask_spec() or {"mode": "binary"},
                "patients_are_images": lst.patients_are_images, "skipped": skipped, "source": self.name,
                "validate": validate, "on_error": p.get("on_error", "stop"), "skipped_file": "skipped.parquet",
                "ignored_files": ignored}
        out = ctx.out_dir("images")
        pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).to_parquet(out / "skipped.parquet", index=False)
        images = ImageSet(out, table, meta).save()
        ctx.report.table(f"Data set ({self.name})", [
            {"class": c, "patients": int(table.loc[table.label == c, "patient_id"].nunique()),
             "images": int((table.label == c).sum())} for c in classes] +
            ([{"class": "(unlabelled)", "patients": int(table.loc[table.label == "", "patient_id"].nunique()),
               "images": int((table.label == "").sum())}] if (table.label == "").any() else []), section="data")
        if skipped:
            ctx.report.table(f"Skipped files ({len(skipped)}; on_error: skip; the full list is skipped.parquet "
                             f"of step {ctx.step_id})", skipped[:200], section="data")
        if ignored:
            ctx.report.table(f"Ignored files, not images ({sum(ignored.values())})",
                             [{"kind": k, "files": n} for k, n in ignored.items()], section="data")
        if lst.patients_are_images:
            ctx.report.text("Patients are images", "This data set has no patient identifiers: each image is "
                            "its own patient.", section="data")
        return {"images": images}
