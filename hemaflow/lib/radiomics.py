"""pyradiomics plumbing for the ``radiomics`` feature extractor.

Kept apart from :mod:`hemaflow.plugins.features` so that worker processes import only this
module, and so the rules that make pyradiomics safe to use on 2-D cells live in one place:

* **2-D texture.** A plain 2-D SimpleITK image with ``force2D=True`` makes pyradiomics treat every
  image row as a slice (``force2Ddimension=0`` is the first *array* axis), so GLCM, GLRLM,
  GLSZM, GLDM and NGTDM become one-dimensional and silently wrong (GLSZM then equals GLRLM).
  Every image here is a ``(1, H, W)`` volume with ``force2D=True, force2Ddimension=0``: the
  single-voxel z axis is the out-of-plane axis and texture is computed in the (y, x) plane.
* **Strict parameters.** pyradiomics quietly ignores unknown setting names; here the recipe's
  ``settings`` and an optional parameter file are validated against :data:`SETTINGS_SCHEMA`
  and the pyradiomics feature/class/image-type names, and anything unknown is an error.
* **Quiet.** The ``radiomics`` logger is set to ERROR; numpy warnings inside feature maths
  (0/0 on degenerate matrices) are silenced; failures become a per-cell skip reason.

Grey conversions (RGB uint8 -> float64, computed identically for every cell so values are
comparable across cells and images):

* ``luminance``: ``0.2125 R + 0.7154 G + 0.0721 B`` (ITU-R BT.709, as skimage's ``rgb2gray``),
  range 0-255.
* ``hematoxylin``: the H channel of ``skimage.color.rgb2hed`` scaled by a *fixed* factor
  (``255 / max possible H``) so it spans 0-255 like the others (no per-cell rescaling).
* ``magnitude``: the RGB vector magnitude ``sqrt(R^2 + G^2 + B^2)`` (SimpleITK's
  ``VectorMagnitude``, what the original research code fed pyradiomics), range 0-441.7.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from hemaflow.lib.radiomics_settings import (  # noqa: F401  (settings and parameter files; imported from here too)
    FEATURE_CLASSES, PARAMS_FILE_KEYS, ParamsFileError, RESERVED_SETTINGS, SETTINGS_SCHEMA, feature_names,
    validate_params_file)

GREY_MODES = ("luminance", "hematoxylin", "magnitude")
REGIONS = {"cell": (1, 2), "nucleus": (2,), "cytoplasm": (1,)}
COLUMN_PREFIX = "radiomics_"


def quiet_radiomics() -> None:
    """Silence pyradiomics' INFO/WARNING chatter (its logger and stderr handler)."""
    import radiomics

    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# -- extraction config ----------------------------------------------------------------------------
def build_config(*, classes: list[str], settings: dict[str, Any], grey: str, region: str, min_pixels: int,
                 params_file: str | None = None, itk_threads: int = 1) -> dict[str, Any]:
    """Resolve the recipe parameters (and parameter file) into one JSON-able extraction config.

    Precedence: the parameter file's ``setting`` entries override the recipe's ``settings``; its
    ``featureClass`` replaces ``classes``; its ``imageType`` replaces ``{Original: {}}``.
    """
    from hemaflow.core.schema import fill_defaults

    eff = fill_defaults(SETTINGS_SCHEMA, copy.deepcopy(settings))
    features: dict[str, list[str]] = {c: [] for c in classes}
    image_types: dict[str, dict[str, Any]] = {"Original": {}}
    pf = None
    if params_file:
        parsed = validate_params_file(params_file)
        eff.update(parsed["setting"])
        if parsed["featureClass"]:
            features = {c: list(v or []) for c, v in parsed["featureClass"].items()}
        if parsed["imageType"]:
            image_types = {k: dict(v or {}) for k, v in parsed["imageType"].items()}
        pf = {"path": str(params_file), "sha256": file_sha256(params_file)}
    if eff.get("resampledPixelSpacing") is not None and len(eff["resampledPixelSpacing"]) == 2:
        eff["resampledPixelSpacing"] = list(eff["resampledPixelSpacing"]) + [0]  # z: keep
    if eff.get("geometryTolerance") is None:
        eff.pop("geometryTolerance", None)
    eff.update(force2D=True, force2Ddimension=0, label=1, additionalInfo=False)
    return {"settings": eff, "features": features, "image_types": image_types, "grey": grey,
            "region": region, "min_pixels": int(min_pixels), "params_file": pf,
            "itk_threads": int(itk_threads)}


@functools.lru_cache(maxsize=4)
def _extractor(config_json: str):
    from radiomics import featureextractor

    quiet_radiomics()
    cfg = json.loads(config_json)
    ex = featureextractor.RadiomicsFeatureExtractor(**cfg["settings"])
    ex.disableAllImageTypes()
    for name, custom in cfg["image_types"].items():
        ex.enableImageTypeByName(name, customArgs=custom)
    ex.disableAllFeatures()
    ex.enableFeaturesByName(**cfg["features"])
    return ex


def make_extractor(config: dict[str, Any]):
    """A pyradiomics ``RadiomicsFeatureExtractor`` for ``config`` (cached per process)."""
    return _extractor(json.dumps(config, sort_keys=True))


# -- grey conversion --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _hematoxylin_scale() -> float:
    from skimage.color import hed_from_rgb

    # rgb2hed: OD = log(max(rgb/255, 1e-6)) / log(1e-6) in [0, 1]; H = OD @ hed_from_rgb[:, 0], clipped
    # at 0, so the largest possible H is the sum of the positive coefficients.
    return 255.0 / float(np.clip(hed_from_rgb[:, 0], 0, None).sum())


def to_grey(rgb: np.ndarray, mode: str) -> np.ndarray:
    """Convert RGB uint8 (..., 3) to a float64 grey image with the documented conversion."""
    x = np.asarray(rgb)
    if mode == "luminance":
        return x.astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])
    if mode == "magnitude":
        xf = x.astype(np.float64)
        return np.sqrt((xf * xf).sum(axis=-1))
    if mode == "hematoxylin":
        from skimage.color import rgb2hed

        return rgb2hed(np.ascontiguousarray(x))[..., 0] * _hematoxylin_scale()
    raise ValueError(f"unknown grey conversion {mode!r}; expected one of {GREY_MODES}")


def region_mask(mask: np.ndarray, region: str) -> np.ndarray:
    """uint8 0/1 mask of ``region`` (cell, nucleus, cytoplasm) from a 0/1/2 mask."""
    if region == "cell":
        return (mask > 0).view(np.uint8)
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; expected one of {list(REGIONS)}")
    return (mask == REGIONS[region][0]).view(np.uint8)


# -- extraction -----------------------------------------------------------------------------------
def extract_one(rgb: np.ndarray, mask: np.ndarray, config: dict[str, Any],
                extractor: Any = None) -> tuple[dict[str, float] | None, str]:
    """Extract features of one crop. Returns ``(features, "")`` or ``(None, skip reason)``.

    ``rgb`` is RGB uint8 HxWx3, ``mask`` uint8 HxW with 0/1/2. Feature keys are pyradiomics'
    (``original_glcm_Contrast``); the image handed to pyradiomics is ``(1, H, W)`` float64 with
    ``force2D=True, force2Ddimension=0`` (see the module docstring). ``extractor`` is the
    config's extractor when the caller already has it (saves a lookup per cell).
    """
    import SimpleITK as sitk

    roi = region_mask(mask, config["region"])
    n = int(roi.sum())
    if n == 0:
        return None, f"empty {config['region']} region"
    if n < config["min_pixels"]:
        return None, f"too small: {n} pixel(s) in the {config['region']} region (min_pixels {config['min_pixels']})"
    grey = to_grey(rgb, config["grey"])
    vals = grey[roi.view(bool)]
    if float(vals.max() - vals.min()) == 0.0:
        return None, f"constant intensity in the {config['region']} region ({config['grey']} = {float(vals[0]):g})"
    ex = extractor if extractor is not None else make_extractor(config)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            result = ex.execute(sitk.GetImageFromArray(grey[None]), sitk.GetImageFromArray(roi[None]))
    except Exception as exc:  # pyradiomics raises ValueError/RuntimeError/IndexError on degenerate ROIs
        return None, f"pyradiomics failed: {type(exc).__name__}: {exc}"
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}, ""


@functools.lru_cache(maxsize=2)
def _open_crops(path: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """The CellSet's crops and crop masks, memory-mapped once per worker process."""
    return (np.load(Path(path) / "crops.npy", mmap_mode="r"),
            np.load(Path(path) / "crop_masks.npy", mmap_mode="r"))


@contextlib.contextmanager
def itk_threads(n: int):
    """Run SimpleITK filters with ``n`` threads (0: leave SimpleITK's default), then restore.

    pyradiomics calls a dozen small SimpleITK filters per cell; on 96 px crops their thread
    start-up costs more than it saves, and with a process pool it oversubscribes the CPUs.
    """
    import SimpleITK as sitk

    if not n:
        yield
        return
    po = sitk.ProcessObject
    before = po.GetGlobalDefaultNumberOfThreads()
    po.SetGlobalDefaultNumberOfThreads(int(n))
    try:
        yield
    finally:
        po.SetGlobalDefaultNumberOfThreads(before)


def extract_cells_chunk(task: tuple[str, list[int], dict[str, Any]]) -> list[tuple[int, dict[str, float] | None, str]]:
    """Worker for ``ctx.map``: extract features of the crops ``indices`` of a CellSet directory.

    ``task`` is ``(cellset_dir, crop_indices, config)``; crops are opened memory-mapped in the
    worker, so only indices and the config cross process boundaries.
    """
    path, indices, config = task
    crops, masks = _open_crops(str(path), (Path(path) / "crops.npy").stat().st_mtime_ns)
    out = []
    ex = make_extractor(config)
    with itk_threads(config.get("itk_threads", 1)):
        for i in indices:
            feats, reason = extract_one(np.asarray(crops[i]), np.asarray(masks[i]), config, ex)
            out.append((i, feats, reason))
    return out


def extract_images_chunk(task: tuple[list[tuple[int, str, str | None, dict | None]], dict[str, Any]]):
    """Worker for per-image extraction: ``task`` is ``(items, config)`` with items
    ``(row, image_path, mask_path, mask_spec)``; features over the union of the image's cells."""
    items, config = task
    with itk_threads(config.get("itk_threads", 1)):
        return [_extract_image(row, image_path, mask_path, spec, config) for row, image_path, mask_path, spec in items]


def _extract_image(row: int, image_path: str, mask_path: str, spec: dict | None, config: dict[str, Any]):
    from hemaflow.core.errors import DataError
    from hemaflow.lib import imageio as io

    try:
        rgb = io.read_image(image_path)
        mask = io.read_mask(mask_path, spec)
        if mask.shape != rgb.shape[:2]:
            raise DataError(mask_path, f"mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                            f"{rgb.shape[1]}x{rgb.shape[0]}")
    except DataError as exc:
        return row, None, f"unreadable: {exc}"
    feats, reason = extract_one(rgb, mask, config)
    return row, feats, reason


def versions() -> dict[str, str]:
    import radiomics
    import SimpleITK as sitk

    return {"pyradiomics": str(radiomics.__version__), "SimpleITK": str(sitk.Version_VersionString())}
