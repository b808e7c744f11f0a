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

FEATURE_CLASSES = ("firstorder", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
GREY_MODES = ("luminance", "hematoxylin", "magnitude")
REGIONS = {"cell": (1, 2), "nucleus": (2,), "cytoplasm": (1,)}
COLUMN_PREFIX = "radiomics_"
# settings hemaflow sets itself: a parameter file may not change them
RESERVED_SETTINGS = {
    "label": "the region is chosen with the component's `region` parameter",
    "label_channel": "hemaflow passes single-channel label masks",
    "force2D": "hemaflow always extracts 2-D features from a (1, H, W) image (force2D=True)",
    "force2Ddimension": "hemaflow always uses force2Ddimension=0 on a (1, H, W) image",
    "additionalInfo": "diagnostic columns are never written into the feature table",
}

_INTERPOLATORS = ["sitkNearestNeighbor", "sitkLinear", "sitkBSpline", "sitkGaussian", "sitkLabelGaussian",
                  "sitkHammingWindowedSinc", "sitkCosineWindowedSinc", "sitkWelchWindowedSinc",
                  "sitkLanczosWindowedSinc", "sitkBlackmanWindowedSinc"]


def _num(desc: str, *, minimum: float | None = None, exclusive: bool = True, nullable: bool = False,
         integer: bool = False, default: Any = ..., maximum: float | None = None) -> dict[str, Any]:
    t: Any = "integer" if integer else "number"
    s: dict[str, Any] = {"type": [t, "null"] if nullable else t, "description": desc}
    if minimum is not None:
        s["exclusiveMinimum" if exclusive else "minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    if default is not ...:
        s["default"] = default
    return s


# The pyradiomics settings a recipe (``settings:``) or a parameter file (``setting:``) may use,
# with pyradiomics' own defaults. Mirrors pyradiomics' paramSchema.yaml minus RESERVED_SETTINGS.
SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "pyradiomics settings (pyradiomics' own names); unknown names are an error",
    "properties": {
        "binWidth": _num("grey-level bin width (ignored when binCount is set)", minimum=0, default=25),
        "binCount": _num("fixed number of grey-level bins; null uses binWidth", minimum=0, integer=True,
                         nullable=True, default=None),
        "normalize": {"type": "boolean", "default": False,
                      "description": "z-score the grey image (over the whole crop) before binning"},
        "normalizeScale": _num("scale applied after normalize", minimum=0, default=1),
        "removeOutliers": _num("with normalize: clip at this many standard deviations", minimum=0,
                               nullable=True, default=None),
        "resampledPixelSpacing": {
            "type": ["array", "null"], "items": {"type": "number", "minimum": 0}, "minItems": 2, "maxItems": 3,
            "default": None,
            "description": "resample to this [x, y] pixel spacing (pixels are 1x1; 0 keeps an axis); null: no resampling"},
        "interpolator": {"enum": _INTERPOLATORS, "default": "sitkBSpline",
                         "description": "SimpleITK interpolator used when resampling"},
        "padDistance": _num("padding (pixels) kept around the ROI when resampling", minimum=0, exclusive=False,
                            integer=True, default=5),
        "preCrop": {"type": "boolean", "default": False, "description": "crop to the ROI before resampling"},
        "distances": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 1, "default": [1],
                      "description": "neighbour distances (pixels) for GLCM, NGTDM and GLDM"},
        "minimumROIDimensions": _num("fewest dimensions the ROI must span (2: not a line)", minimum=1,
                                     exclusive=False, maximum=2, integer=True, default=2),
        "minimumROISize": _num("fewest pixels pyradiomics accepts in the ROI; null: no check", minimum=0,
                               integer=True, nullable=True, default=None),
        "symmetricalGLCM": {"type": "boolean", "default": True, "description": "count GLCM pairs both ways"},
        "weightingNorm": {"enum": [None, "manhattan", "euclidean", "infinity", "no_weighting"], "default": None,
                          "description": "weight GLCM/GLRLM directions by distance; null averages them"},
        "gldm_a": _num("GLDM dependence cut-off alpha", minimum=0, exclusive=False, integer=True, default=0),
        "voxelArrayShift": _num("shift added to intensities for energy features", integer=True, default=0),
        "resegmentRange": {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 1, "maxItems": 2,
                           "default": None, "description": "keep only ROI pixels in this grey range"},
        "resegmentMode": {"enum": ["absolute", "relative", "sigma"], "default": "absolute",
                          "description": "how resegmentRange is read"},
        "resegmentShape": {"type": "boolean", "default": False,
                           "description": "use the resegmented ROI for shape2D too"},
        "correctMask": {"type": "boolean", "default": False,
                        "description": "resample the mask onto the image grid if they differ"},
        "geometryTolerance": _num("SimpleITK geometry tolerance", minimum=0, nullable=True),
        # filter (image type) settings
        "sigma": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1,
                  "description": "LoG sigmas (pixels)"},
        "start_level": _num("first wavelet level", minimum=0, exclusive=False, integer=True),
        "level": _num("wavelet levels", minimum=0, integer=True),
        "wavelet": {"type": "string", "description": "PyWavelets wavelet name (e.g. coif1)"},
        "gradientUseSpacing": {"type": "boolean", "description": "gradient filter uses pixel spacing"},
        "lbp2DRadius": _num("LBP2D radius", minimum=0),
        "lbp2DSamples": _num("LBP2D samples", minimum=1, exclusive=False, integer=True),
        "lbp2DMethod": {"enum": ["default", "ror", "uniform", "var"], "description": "LBP2D method"},
    },
    "additionalProperties": False,
}

# top-level keys of a pyradiomics parameter file
PARAMS_FILE_KEYS = ("setting", "featureClass", "imageType")


class ParamsFileError(ValueError):
    """A pyradiomics parameter file is invalid; ``problems`` lists (json pointer, message)."""

    def __init__(self, path: str, problems: list[tuple[str, str]]):
        self.path, self.problems = path, problems
        super().__init__("; ".join(f"{p or '/'}: {m}" for p, m in problems))


def quiet_radiomics() -> None:
    """Silence pyradiomics' INFO/WARNING chatter (its logger and stderr handler)."""
    import radiomics

    radiomics.setVerbosity(logging.ERROR)
    logging.getLogger("radiomics").setLevel(logging.ERROR)


def feature_names(cls_name: str) -> list[str]:
    """The non-deprecated feature names pyradiomics computes for feature class ``cls_name``."""
    import radiomics

    return [n for n, deprecated in radiomics.getFeatureClasses()[cls_name].getFeatureNames().items()
            if not deprecated]


# -- parameter files ------------------------------------------------------------------------------
def _schema_problems(schema: dict[str, Any], value: Any, base: str) -> list[tuple[str, str]]:
    import difflib

    import jsonschema

    out = []
    for err in sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path)):
        ptr = base + "".join(f"/{p}" for p in err.path)
        if err.validator == "additionalProperties":
            known = list(err.schema.get("properties", {}))
            extra = [k for k in err.instance if k not in known]
            for k in extra:
                hint = ""
                if k in RESERVED_SETTINGS:
                    hint = f" ({RESERVED_SETTINGS[k]})"
                else:
                    close = difflib.get_close_matches(k, known, n=1, cutoff=0.6)
                    hint = f"; did you mean {close[0]!r}?" if close else ""
                out.append((f"{ptr}/{k}", f"unknown setting {k!r}{hint}"))
        else:
            out.append((ptr, err.message))
    return out


def validate_params_file(path: str | Path) -> dict[str, Any]:
    """Read and strictly validate a pyradiomics parameter file (YAML or JSON).

    Returns ``{"setting": {...}, "featureClass": {...} or None, "imageType": {...} or None}``.

    Raises:
        ParamsFileError: unknown top-level keys, unknown or reserved settings, wrong types,
            unknown feature classes, feature names or image types (all problems at once).
        FileNotFoundError: the file does not exist.
    """
    import difflib

    import radiomics
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsFileError(str(path), [("", f"not valid YAML/JSON: {exc}")]) from None
    problems: list[tuple[str, str]] = []
    if not isinstance(data, dict):
        raise ParamsFileError(str(path), [("", "must be a mapping with keys setting, featureClass, imageType")])
    for key in data:
        if key not in PARAMS_FILE_KEYS:
            hint = " (voxel-based extraction is not supported)" if key == "voxelSetting" else \
                difflib.get_close_matches(str(key), PARAMS_FILE_KEYS, n=1, cutoff=0.6)
            if isinstance(hint, list):
                hint = f"; did you mean {hint[0]!r}?" if hint else f"; expected one of {list(PARAMS_FILE_KEYS)}"
            problems.append((f"/{key}", f"unknown key {key!r}{hint}"))
    setting = data.get("setting") or {}
    problems += _schema_problems(SETTINGS_SCHEMA, setting, "/setting")
    fclass = data.get("featureClass")
    if fclass is not None:
        if not isinstance(fclass, dict) or not fclass:
            problems.append(("/featureClass", "must map feature class names to null or a list of feature names"))
        else:
            for cls_name, names in fclass.items():
                if cls_name not in FEATURE_CLASSES:
                    hint = " (3-D shape; cells are 2-D: use shape2D)" if cls_name == "shape" else \
                        "".join(f"; did you mean {c!r}?" for c in difflib.get_close_matches(cls_name, FEATURE_CLASSES, 1))
                    problems.append((f"/featureClass/{cls_name}", f"unknown feature class {cls_name!r}{hint}"))
                    continue
                if names is None or names == []:
                    continue
                if not isinstance(names, list):
                    problems.append((f"/featureClass/{cls_name}", "must be null or a list of feature names"))
                    continue
                known = feature_names(cls_name)
                for i, n in enumerate(names):
                    if n not in known:
                        close = difflib.get_close_matches(str(n), known, n=1, cutoff=0.6)
                        hint = f"; did you mean {close[0]!r}?" if close else ""
                        problems.append((f"/featureClass/{cls_name}/{i}", f"unknown {cls_name} feature {n!r}{hint}"))
    itype = data.get("imageType")
    if itype is not None:
        if not isinstance(itype, dict) or not itype:
            problems.append(("/imageType", "must map image type names to their settings"))
        else:
            known_types = [t for t in radiomics.getImageTypes() if t != "LBP3D"]
            for name, custom in itype.items():
                if name not in known_types:
                    close = difflib.get_close_matches(str(name), known_types, n=1, cutoff=0.6)
                    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {known_types}"
                    problems.append((f"/imageType/{name}", f"unknown image type {name!r}{hint}"))
                    continue
                problems += _schema_problems(SETTINGS_SCHEMA, custom or {}, f"/imageType/{name}")
    if problems:
        raise ParamsFileError(str(path), problems)
    return {"setting": setting, "featureClass": fclass, "imageType": itype}


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
