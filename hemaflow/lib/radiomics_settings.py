"""PyRadiomics settings: the JSON Schema of the settings hemaflow lets a recipe set, and the strict
validation of a PyRadiomics parameter file (one message per problem, naming the file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FEATURE_CLASSES = ("firstorder", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm")

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
