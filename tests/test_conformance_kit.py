"""The conformance kit can fail: broken components are rejected, each with a message saying what to fix.

The first eleven are the broken components from issue 16 (a property without default, a normalizer
returning a TableArtifact or None, one dropping patient_id, one writing float .npy images,
``version = 1``, ...). A plugin's own artifact type passes; the docstring examples run.
"""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pandas as pd
import pytest

import hemaflow.testing
import hemaflow.testing.fixtures
from hemaflow import hookimpl
from hemaflow.core.artifacts import TableArtifact
from hemaflow.core.component import Component
from hemaflow.plugins.artifacts import FeatureTable, ImageSet, MaskSet
from hemaflow.lib.imageio import write_png
from hemaflow.testing import ConformanceError, check_component, iter_checks, parametrize_with_checks

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def one_torch_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- a correct normalizer and a correct feature extractor the broken ones are variations of ----------
class Invert(Component):
    """Invert the colours of every image."""

    kind = "normalizer"
    name = "invert"
    version = "1"
    schema = {"type": "object", "properties": {"strength": {"type": "number", "default": 1.0}},
              "additionalProperties": False}
    inputs = {"images": "ImageSet"}
    outputs = {"images": "ImageSet"}

    def write(self, ctx, images, img_fn, suffix=".png"):
        out, rows = ctx.out_dir("images"), []
        for _, row in images.table.iterrows():
            rel = f"{row['image_id']}{suffix}"
            img = img_fn(images.read_image(row))
            if suffix == ".npy":
                np.save(out / rel, img)
            else:
                write_png(out / rel, img)
            rows.append(dict(row, path=rel))
        return images.derive(out, pd.DataFrame(rows))

    def run(self, ctx, images):
        s = float(self.params["strength"])
        return {"images": self.write(ctx, images, lambda im: (im * (1 - s) + (255 - im) * s).astype(np.uint8)).save()}


class MeanColour(Component):
    """Mean colour of every cell crop."""

    kind = "features"
    name = "mean_colour"
    version = "1"
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    inputs = {"cells": "CellSet"}
    outputs = {"features": "FeatureTable"}
    id_columns = ("cell_id", "image_id", "patient_id", "label")

    def values(self, ctx, cells):
        return np.asarray(cells.crops, dtype=float).reshape(len(cells.table), -1, 3).mean(axis=1)

    def run(self, ctx, cells):
        v = self.values(ctx, cells)
        cols = ["mean_r", "mean_g", "mean_b"]
        table = pd.concat([cells.table[list(self.id_columns)].reset_index(drop=True),
                           pd.DataFrame(v, columns=cols)], axis=1)
        return {"features": FeatureTable(ctx.out_dir("features"), table, {"feature_columns": cols}).save()}


def test_the_correct_components_pass():
    check_component(Invert)
    check_component(MeanColour)


# -- the eleven broken components -------------------------------------------------------------
class NoDefault(Invert):
    """A property without a default (a KeyError when a recipe leaves it out)."""

    name = "no_default"
    schema = {"type": "object", "properties": {"gamma": {"type": "number"}}, "additionalProperties": False}

    def run(self, ctx, images):
        g = float(self.params["gamma"])
        return {"images": self.write(ctx, images, lambda im: (255 * (im / 255) ** g).astype(np.uint8)).save()}


class ReturnsTable(Invert):
    """A normalizer returning a plain TableArtifact."""

    name = "returns_table"

    def run(self, ctx, images):
        return {"images": TableArtifact(ctx.out_dir("images"), images.table.copy()).save()}


class ReturnsNone(Invert):
    """A normalizer that writes its images but forgets to return them."""

    name = "returns_none"

    def run(self, ctx, images):
        self.write(ctx, images, lambda im: 255 - im).save()


class DropsPatientId(MeanColour):
    """Features without the patient_id column."""

    name = "drops_patient_id"
    id_columns = ("cell_id", "image_id", "label")

    def run(self, ctx, cells):
        v = self.values(ctx, cells)
        table = pd.concat([cells.table[list(self.id_columns)].reset_index(drop=True),
                           pd.DataFrame(v, columns=["r", "g", "b"])], axis=1)
        return {"features": FeatureTable(ctx.out_dir("features"), table, {"feature_columns": ["r", "g", "b"]})}


class FloatNpyImages(Invert):
    """A normalizer writing float images as .npy (cached, then fails downstream)."""

    name = "float_npy"

    def run(self, ctx, images):
        return {"images": self.write(ctx, images, lambda im: im / 255.0, suffix=".npy").save()}


class IntVersion(Invert):
    """version = 1 (an int)."""

    name = "int_version"
    version = 1


class OpenSchema(Invert):
    """A schema that lets typos through."""

    name = "open_schema"
    schema = {"type": "object", "properties": {"strength": {"type": "number", "default": 1.0}}}


class BinaryMasks(Component):
    """A segmenter writing 0/255 masks instead of 0/1/2."""

    kind = "segmenter"
    name = "binary_masks"
    version = "1"
    inputs = {"images": "ImageSet"}
    outputs = {"masks": "MaskSet"}

    def run(self, ctx, images):
        out, rows = ctx.out_dir("masks"), []
        for _, row in images.table.iterrows():
            img = images.read_image(row)
            write_png(out / f"{row['image_id']}.png", np.where(img.mean(-1) < 150, 255, 0).astype(np.uint8))
            rows.append({"image_id": row["image_id"], "path": f"{row['image_id']}.png"})
        return {"masks": MaskSet(out, pd.DataFrame(rows)).save()}


class Unseeded(MeanColour):
    """Features with noise from numpy's global random state (not ctx.rng)."""

    name = "unseeded"

    def values(self, ctx, cells):
        return super().values(ctx, cells) + np.random.normal(size=(len(cells.table), 3))


class CrashesOnEmptyMask(Component):
    """A cell extractor that assumes every mask has a cell."""

    kind = "cells"
    name = "crashes_on_empty_mask"
    version = "1"
    inputs = {"images": "ImageSet", "masks": "MaskSet"}
    outputs = {"cells": "CellSet"}

    def run(self, ctx, images, masks):
        from hemaflow.plugins.artifacts import CellSet

        out, rows, crops, cmasks = ctx.out_dir("cells"), [], [], []
        for _, row in images.table.iterrows():
            m = masks.read_mask(row["image_id"])
            ys, xs = np.nonzero(m)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                cy, cx = int(ys.mean()), int(xs.mean())  # ValueError: nan -> int on an empty mask
            y0, x0 = min(max(cy - 8, 0), m.shape[0] - 16), min(max(cx - 8, 0), m.shape[1] - 16)
            crops.append(images.read_image(row)[y0:y0 + 16, x0:x0 + 16])
            cmasks.append(m[y0:y0 + 16, x0:x0 + 16])
            rows.append({"cell_id": f"{row['image_id']}:1", "image_id": row["image_id"],
                         "patient_id": row["patient_id"], "label": row["label"], "crop_index": len(rows)})
        np.save(out / "crops.npy", np.array(crops, np.uint8))
        np.save(out / "crop_masks.npy", np.array(cmasks, np.uint8))
        return {"cells": CellSet(out, pd.DataFrame(rows), {"crop_size": 16}).save()}


class ArrayInMeta(MeanColour):
    """Meta holding a numpy array: saved as its str, so the cached artifact differs."""

    name = "array_in_meta"

    def run(self, ctx, cells):
        out = super().run(ctx, cells)["features"]
        out.meta["channel_means"] = np.asarray(cells.crops, dtype=float).mean(axis=(0, 1, 2))
        return {"features": out.save()}


BROKEN = [
    (NoDefault, "property 'gamma' has no default and is not required, but the code reads params['gamma'] "
                "(a KeyError when a recipe leaves it out); add \"default\": ... to it or list it in \"required\""),
    (ReturnsTable, "output 'images' is a TableArtifact; it is declared ImageSet: return a "
                   "hemaflow.plugins.artifacts.ImageSet"),
    (ReturnsNone, "run() returned NoneType; it must return a dict of its declared outputs, {'images': <ImageSet>}"),
    (DropsPatientId, "output 'features' (FeatureTable) lacks column(s) ['patient_id']; keep the id columns of "
                     "the input rows (e.g. table['patient_id'] = input.table['patient_id'])"),
    (FloatNpyImages, "output 'images' (ImageSet): image 'p0_im0' is stored as p0_im0.npy (float64 (64, 64, 3)), "
                     "which no image reader opens; write RGB uint8 HxWx3 image files with "
                     "hemaflow.lib.imageio.write_png(path, np.clip(img, 0, 255).astype(np.uint8))"),
    (IntVersion, "version is 1 (int); it must be a non-empty string, e.g. version = \"1\""),
    (OpenSchema, "schema must set \"additionalProperties\": False so that a typo in a recipe's with: is an error"),
    (BinaryMasks, "output 'masks' (MaskSet): mask 'p0_im0' holds values [255]; only 0 (background), "
                  "1 (cytoplasm) and 2 (nucleus) are allowed"),
    (Unseeded, "two runs with the same seed differ in output 'features': column 'mean_r' row 0"),
    (CrashesOnEmptyMask, "edge case (images=ImageSet (12 images, 6 patients, 2 classes), masks=MaskSet (12 rows)) "
                         "crashed with ValueError: cannot convert float NaN to integer"),
    (ArrayInMeta, "output 'features' (FeatureTable) changes when saved and loaded back: meta /channel_means"),
]


@pytest.mark.parametrize("cls,expected", BROKEN, ids=[c.name for c, _ in BROKEN])
def test_the_kit_rejects_a_broken_component_saying_what_to_fix(cls, expected):
    with pytest.raises(ConformanceError) as exc:
        check_component(cls)
    msg = str(exc.value)
    assert isinstance(exc.value, AssertionError)
    assert msg.startswith(f"{cls.__module__}.{cls.__qualname__} ({cls.kind} {cls.name!r}): "), msg
    assert expected in msg, msg


def test_an_output_outside_the_work_directory_is_rejected(tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")

    class WritesElsewhere(Invert):
        """Writes its images to a fixed folder instead of ctx.out_dir."""

        name = "writes_elsewhere"

        def run(self, ctx, images):
            out = super().run(ctx, images)["images"]
            moved = ImageSet(elsewhere, out.table.assign(path=[str(out.resolve(p)) for p in out.table["path"]]),
                             out.meta)
            return {"images": moved.save()}

    with pytest.raises(ConformanceError, match=f"output 'images' is written to {elsewhere}, outside the step's "
                                               r"work directory; write it below ctx.out_dir\('images'\)"):
        check_component(WritesElsewhere)


def test_the_empty_mask_crash_names_the_fix():
    with pytest.raises(ConformanceError) as exc:
        check_component(CrashesOnEmptyMask)
    assert "crashed with ValueError" in str(exc.value)
    assert str(exc.value).endswith("handle it, or raise hemaflow.core.errors.DataError with a message naming "
                                   "the problem")


def test_a_clear_refusal_of_an_edge_case_passes():
    from hemaflow.core.errors import DataError

    class Refuses(CrashesOnEmptyMask):
        """Refuses images without cells, clearly."""

        name = "refuses_empty"

        def run(self, ctx, images, masks):
            for iid in images.table["image_id"]:
                if not masks.read_mask(iid).any():
                    raise DataError(masks.path, f"mask of {iid} has no cell")
            return super().run(ctx, images, masks)

    check_component(Refuses)


# -- a plugin's own artifact type ---------------------------------------------------------------
class Morphometry(TableArtifact):
    """A plugin's own artifact type: one row per cell with shape measures."""

    type_name = "Morphometry"
    required_columns = ("cell_id", "patient_id", "area")


@hookimpl
def register_artifact_types(register):
    register(Morphometry)


class Measure(Component):
    """Cell areas as the plugin's own Morphometry artifact."""

    kind = "features"
    name = "measure"
    version = "1"
    inputs = {"cells": "CellSet"}
    outputs = {"morphometry": "Morphometry"}

    def run(self, ctx, cells):
        t = cells.table[["cell_id", "patient_id"]].assign(area=cells.table["area"].astype(float))
        return {"morphometry": Morphometry(ctx.out_dir("morphometry"), t.reset_index(drop=True)).save()}


def test_a_plugins_own_artifact_type_is_honoured():
    check_component(Measure)  # found through the module's register_artifact_types hook
    check_component(Measure, artifact_types=[Morphometry])


def test_an_unregistered_own_type_says_how_to_register_it():
    class Elsewhere(Measure):
        """Outputs a type nobody registered."""

        name = "elsewhere"
        outputs = {"morphometry": "Morphometrics"}

    with pytest.raises(ConformanceError, match="unknown artifact type 'Morphometrics' \\(did you mean 'Morphometry'"):
        check_component(Elsewhere)


def test_an_input_without_fixture_asks_for_one():
    class NeedsModel(Measure):
        """Needs a trained Model."""

        name = "needs_model"
        inputs = {"cells": "CellSet", "model": "Model"}

        def run(self, ctx, cells, model):
            return super().run(ctx, cells)

    with pytest.raises(ConformanceError, match=r"input 'model' \(Model\) has no built-in fixture; pass "
                                               r"inputs=\{'model': lambda fixtures: <a saved Model>\}"):
        check_component(NeedsModel)


# -- the pytest API and the docs ---------------------------------------------------------------
def test_parametrize_with_checks_gives_one_test_per_check():
    mark = parametrize_with_checks([Invert, MeanColour])
    argname, checks = mark.args
    assert argname == "check"
    ids = mark.kwargs["ids"]
    assert "invert-check_deterministic" in ids and "invert-check_edge_grey_image" in ids
    assert "mean_colour-check_edge_bag_of_one" in ids and "mean_colour-check_cache_round_trip" in ids
    assert len(ids) == len(set(ids)) == len(checks)
    assert [c.name for c in iter_checks(IntVersion)][0] == "check_class_attributes"


@parametrize_with_checks([Invert])
def test_parametrized_checks_pass(check):
    check()


@pytest.mark.parametrize("module", [hemaflow.testing, hemaflow.testing.fixtures], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0
