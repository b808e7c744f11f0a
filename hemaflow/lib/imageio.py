"""Reading and writing images and masks (PNG, JPEG, BMP, TIFF; RGB or grey; 8 or 16 bit).

Reading is lazy and one file at a time: :func:`image_size` opens a file's header without
decoding the pixels (cheap enough for 100k files), :func:`read_array` decodes one file,
:func:`list_images` walks a folder with ``os.scandir`` without opening anything (and can
collect what it left out: ``Thumbs.db``, ``.DS_Store``, ``._*`` AppleDouble files, ``__MACOSX``
folders, other non-images; :func:`ignored_kind` names them). :func:`decode_check` decodes a
file fully (catches truncated files) without the conversions of :func:`read_array`. Every problem
with a file is a :class:`~hemaflow.core.errors.DataError` naming it.

``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never set by hemaflow: a truncated file is an error
here, not a grey band at the bottom of the image.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

import numpy as np

from hemaflow.core.errors import DataError


def to_rgb_uint8(arr: np.ndarray, path: object = "<array>") -> np.ndarray:
    """Convert a grey/RGB/RGBA array of any integer or float depth to RGB uint8 HxWx3."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise DataError(path, f"expected a 2-D image, got an array of shape {arr.shape}")
    if arr.shape[2] == 4:
        arr = arr[..., :3]
    elif arr.shape[2] == 2:  # grey + alpha
        arr = arr[..., :1]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.uint16 or arr.dtype == np.int32 or arr.dtype == np.uint32:
        maxv = 65535.0 if arr.dtype == np.uint16 else float(max(arr.max(), 1))
        return np.clip(np.round(arr.astype(np.float64) / maxv * 255.0), 0, 255).astype(np.uint8)
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        return np.clip(np.round(arr * scale), 0, 255).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _too_large(path: Path, exc: Exception) -> DataError:
    """PIL's decompression-bomb refusal, naming the file (PIL's message does not)."""
    return DataError(path, f"image too large to decode safely ({exc}); crop or downscale it")


def read_array(path: Path | str) -> np.ndarray:
    """Read an image file as stored (grey or colour, original bit depth)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    if path.suffix.lower() in (".tif", ".tiff"):
        arr = _read_tiff(path)
        if arr is not None:
            return arr
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L"):
                return np.asarray(im, dtype=np.uint16)
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            if im.mode == "1":
                return np.asarray(im.convert("L"))
            if im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            if im.mode in ("LA", "PA"):
                im = im.convert("LA")
            return np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # PIL cannot read some TIFFs (e.g. 16-bit RGB); try tifffile-free fallback via skimage
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                import skimage.io

                return np.asarray(skimage.io.imread(path))
            except Exception:
                pass
        raise DataError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None


def _read_tiff(path: Path) -> np.ndarray | None:
    """Read a TIFF with tifffile when it is installed (PIL truncates 16-bit RGB to 8 bit)."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover - PIL handles the common cases
        return None
    try:
        arr = np.asarray(tifffile.imread(path))
    except Exception as exc:
        raise DataError(path, f"cannot read image ({type(exc).__name__}: {exc})") from None
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) storage
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    return arr


def image_size(path: Path | str) -> tuple[int, int]:
    """Return ``(height, width)`` from the file header, without decoding the pixels.

    Raises:
        DataError: the file is missing, empty, or not an image PIL can identify.
    """
    return _open_image(Path(path), max_pixels=0, problem="not a readable image")


def _open_image(path: Path, *, max_pixels: int | None, problem: str) -> tuple[int, int]:
    """``(height, width)`` of an image file via PIL; the pixels are decoded too unless the image
    has more than ``max_pixels`` (None: always, 0: never). Every failure is a DataError naming
    the file (``problem`` prefixes a decoder error)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            raise DataError(path, "file is empty")
        with Image.open(path) as im:
            w, h = im.size
            if max_pixels is None or w * h <= max_pixels:
                im.load()
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except Image.DecompressionBombError as exc:
        raise _too_large(path, exc) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"{problem} ({type(exc).__name__}: {exc})") from None
    return int(h), int(w)


#: Folders that archivers and file managers add to exports; never data (``__MACOSX`` holds the
#: ``._*`` AppleDouble files of a zip made on macOS).
IGNORED_FOLDERS = frozenset({"__MACOSX", "$RECYCLE.BIN", "System Volume Information"})


def ignored_kind(path: Path | str) -> str:
    """What a file or folder left out of an image listing is, for the count in the report:
    ``Thumbs.db``, ``.DS_Store``, ``desktop.ini``, ``AppleDouble (._*)``, ``__MACOSX`` (and the other
    :data:`IGNORED_FOLDERS`), ``hidden`` (another ``.name``) or ``non-image`` (any other file)."""
    name = Path(path).name
    low = name.lower()
    for known in ("Thumbs.db", ".DS_Store", "desktop.ini", "ehthumbs.db"):
        if low == known.lower():
            return known
    if name.startswith("._"):
        return "AppleDouble (._*)"
    if name in IGNORED_FOLDERS:
        return name
    if name.startswith("."):
        return "hidden"
    return "non-image"


def decode_check(path: Path | str, max_pixels: int | None = None) -> tuple[int, int]:
    """Decode the whole file and return ``(height, width)``; catches truncated and corrupt data
    that :func:`image_size` (header only) cannot see. Costs one decode, no conversion: ~0.06 ms for
    a 120 px BMP crop, ~0.6 ms for a 360 px JPEG crop, ~1.4 ms for a 640x480 JPEG field (CPU).
    With ``max_pixels``, an image with more pixels is only opened (header check, like
    :func:`image_size`).

    Raises:
        DataError: the file is missing, empty, not an image, or cannot be decoded to the end.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):  # decoded as read_array does (tifffile: 16-bit RGB)
        if max_pixels is not None:
            try:
                h, w = image_size(path)
                if h * w > max_pixels:
                    return h, w
            except DataError:
                pass  # a TIFF PIL cannot open may still be one tifffile reads
        return tuple(read_array(path).shape[:2])  # type: ignore[return-value]
    return _open_image(path, max_pixels=max_pixels, problem="cannot read image")


def list_images(root: Path | str, extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
                exclude_suffix: str | None = None, ignored: list[Path] | None = None) -> Iterator[Path]:
    """Yield image files below ``root`` (any depth) in sorted order, without opening them.

    Hidden files and folders (``.name``: ``.DS_Store``, ``._*`` AppleDouble files), the folders in
    :data:`IGNORED_FOLDERS` and files without an image extension (``Thumbs.db``, ``desktop.ini``,
    notes) are left out, and appended to ``ignored`` when it is given (a hidden or ignored folder
    counts once; see :func:`ignored_kind`); so are files whose name ends with ``exclude_suffix``
    (e.g. ``_mask.png`` when masks sit beside their images), which are not counted.
    """
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        raise DataError(root, "folder not found") from None
    except NotADirectoryError:
        raise DataError(root, "not a folder") from None
    for entry in entries:
        if entry.name.startswith(".") or entry.name in IGNORED_FOLDERS:
            if ignored is not None:
                ignored.append(Path(entry.path))
            continue
        if entry.is_dir():
            yield from list_images(entry.path, extensions, exclude_suffix, ignored)
        elif entry.name.lower().endswith(extensions):
            if exclude_suffix and entry.name.lower().endswith(exclude_suffix.lower()):
                continue
            yield Path(entry.path)
        elif ignored is not None:
            ignored.append(Path(entry.path))


def file_stamp(path: Path | str) -> str:
    """``path|size|mtime_ns`` of a file (for data fingerprints; no pixel data is read)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"{path}|missing"
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def read_image(path: Path | str) -> np.ndarray:
    """Read an image as RGB uint8 HxWx3."""
    return to_rgb_uint8(read_array(path), path)


def read_mask(path: Path | str, spec: dict[str, Any] | None = None) -> np.ndarray:
    """Read a mask and map it to uint8 0 background / 1 cytoplasm / 2 nucleus.

    ``spec`` says how stored values map to classes:
        * ``{"mode": "canonical"}``: already 0/1/2 (hemaflow's own masks).
        * ``{"mode": "threshold", "cell": 64, "nucleus": 208}``: value > cell is cell,
          value > nucleus is nucleus (anti-aliased grey masks; ``nucleus`` may be null).
        * ``{"mode": "values", "cytoplasm": [128], "nucleus": [255]}``: exact values;
          any other non-zero value is an error (``strict: true``, default) or cytoplasm.
        * ``{"mode": "colors", "background": [[255, 255, 255]], "cytoplasm": [[0, 0, 255]],
          "nucleus": [[0, 255, 255]], "tolerance": 40}``: colour-coded RGB masks; each class
          lists its colours (background defaults to black). A pixel takes the class of the
          nearest listed colour when it lies within ``tolerance`` (Euclidean RGB distance;
          default: half the smallest distance between two classes' colours, which survives
          JPEG compression, see :func:`colour_tolerance`); a pixel farther from every listed colour is an
          error naming the colours (``strict: true``, default) or takes the nearest colour's class.
        * ``None`` / ``{"mode": "binary"}``: any non-zero value is cell (reads as 1).
    In the other modes RGB masks must have equal channels.

    Example:
        >>> read_mask("mask.png", {"mode": "colors", "background": [[255, 255, 255]],
        ...                        "cytoplasm": [[0, 0, 255]], "nucleus": [[0, 255, 255]]})  # doctest: +SKIP
    """
    arr = read_array(path)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    spec = spec or {"mode": "binary"}
    if spec.get("mode") == "colors":
        return _map_colours(path, to_rgb_uint8(arr, path), spec)
    if arr.ndim == 3 and arr.shape[2] == 2:  # grey + alpha
        arr = arr[..., 0]
    if arr.ndim == 3:
        chans = arr[..., :3]
        if not (np.array_equal(chans[..., 0], chans[..., 1]) and np.array_equal(chans[..., 0], chans[..., 2])):
            raise DataError(path, "mask is RGB with unequal channels; expected a grey or label mask")
        arr = chans[..., 0]
    mode = spec.get("mode", "binary")
    out = np.zeros(arr.shape, dtype=np.uint8)
    if mode == "canonical":
        if arr.max(initial=0) > 2:
            raise DataError(path, f"mask has value {int(arr.max())}; expected 0, 1 or 2")
        return arr.astype(np.uint8)
    if mode == "binary":
        out[arr > spec.get("threshold", 0)] = 1
        return out
    if mode == "threshold":
        out[arr > spec.get("cell", 64)] = 1
        if spec.get("nucleus") is not None:
            out[arr > spec["nucleus"]] = 2
        return out
    if mode == "values":
        cyto = np.isin(arr, spec.get("cytoplasm", []))
        nuc = np.isin(arr, spec.get("nucleus", []))
        bg = np.isin(arr, spec.get("background", [0]))
        other = ~(cyto | nuc | bg)
        if other.any():
            if spec.get("strict", True):
                vals = sorted(int(v) for v in np.unique(arr[other])[:5])
                raise DataError(path, f"mask has unexpected values {vals}; the recipe maps background "
                                f"{spec.get('background', [0])}, cytoplasm {spec.get('cytoplasm', [])}, "
                                f"nucleus {spec.get('nucleus', [])}")
            cyto |= other
        out[cyto] = 1
        out[nuc] = 2
        return out
    raise ValueError(f"unknown mask mode {mode!r}")


MASK_CLASSES = ("background", "cytoplasm", "nucleus")  # in label order 0, 1, 2


def colour_palette(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """The listed colours of a ``colors`` spec as (K, 3) int32 and their labels (K,) uint8."""
    colours, labels = [], []
    for label, name in enumerate(MASK_CLASSES):
        listed = spec.get(name)
        if listed is None and name == "background":
            listed = [[0, 0, 0]]
        for c in listed or []:
            colours.append([int(v) for v in c])
            labels.append(label)
    return np.asarray(colours, np.int32).reshape(-1, 3), np.asarray(labels, np.uint8)


def colour_tolerance(spec: dict[str, Any]) -> float:
    """``tolerance`` of a ``colors`` spec; absent: half the smallest distance between colours of
    two classes, so a stored colour is within tolerance of one class at most.

    JPEG's chroma subsampling moves the colours of a one-pixel band at colour borders by ~100
    (blue next to white at quality 95); flat areas move by a few units.
    """
    if spec.get("tolerance") is not None:
        return float(spec["tolerance"])
    palette, labels = colour_palette(spec)
    d = np.sqrt(((palette[:, None, :] - palette[None, :, :]) ** 2).sum(-1))
    between = d[labels[:, None] != labels[None, :]]
    return float(between.min()) / 2 if between.size else 0.0


def _map_colours(path: Path | str, rgb: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Map a colour-coded RGB mask to 0/1/2 by the nearest listed colour (see :func:`read_mask`)."""
    palette, labels = colour_palette(spec)
    if len(palette) == 0:
        raise DataError(path, "the colors mask spec lists no colour")
    tol = colour_tolerance(spec)
    # distances per distinct stored colour (a PNG mask has a handful, a JPEG one a few thousand)
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    uniq, inverse = np.unique(code.ravel(), return_inverse=True)
    cols = np.stack([uniq >> 16, (uniq >> 8) & 255, uniq & 255], 1)
    d2 = ((cols[:, None, :] - palette[None, :, :]) ** 2).sum(-1)
    nearest = d2.argmin(1)
    far = d2[np.arange(len(cols)), nearest] > tol * tol
    if far.any() and spec.get("strict", True):
        counts = np.bincount(inverse, minlength=len(cols))
        bad = np.flatnonzero(far)
        bad = bad[np.argsort(-counts[bad], kind="stable")]
        shown = ", ".join(f"{cols[i].tolist()} ({int(counts[i])} px)" for i in bad[:5])
        listed = "; ".join(f"{name} {spec.get(name, [[0, 0, 0]] if name == 'background' else [])}"
                           for name in MASK_CLASSES)
        raise DataError(path, f"mask has {int(counts[bad].sum())} pixel(s) of {len(bad)} colour(s) farther than "
                              f"tolerance {tol:g} from every listed colour, e.g. {shown}; the recipe maps {listed} "
                              f"(list the colour under a class, raise tolerance, or set strict: false to take "
                              f"the nearest colour)")
    return labels[nearest][inverse].reshape(rgb.shape[:2])


def check_mask_spec(spec: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Problems of a mask spec that its JSON schema cannot see, as (pointer below the spec, message).

    Checked: ``tolerance`` only in ``colors`` mode; there, at least one cell colour and no colour
    listed for two classes.
    """
    if not spec:
        return []
    if spec.get("mode") != "colors":
        return [("/tolerance", "tolerance is only used with mode: colors")] if "tolerance" in spec else []
    problems = []
    if not spec.get("cytoplasm") and not spec.get("nucleus"):
        problems.append(("", "a colors mask spec needs the colour(s) of cytoplasm or nucleus; "
                             "e.g. cytoplasm: [[0, 0, 255]], nucleus: [[0, 255, 255]]"))
    seen: dict[tuple[int, ...], str] = {}
    for name in MASK_CLASSES:
        for i, c in enumerate(spec.get(name) or []):
            key = tuple(int(v) for v in c)
            if key in seen and seen[key] != name:
                problems.append((f"/{name}/{i}", f"colour {list(key)} is listed for both {seen[key]} and {name}"))
            seen.setdefault(key, name)
    return problems


def write_png(path: Path | str, arr: np.ndarray) -> None:
    """Write an RGB or grey uint8 array as PNG (RGB order preserved)."""
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(arr)).save(path, format="PNG", compress_level=1)


def png_bytes(arr: np.ndarray, max_side: int | None = None) -> bytes:
    """Encode an array as PNG bytes (for report items), optionally downscaled."""
    import io as _io

    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(arr))
    if max_side and max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    buf = _io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def resize(arr: np.ndarray, size: int | Sequence[int] | None, nearest: bool = False) -> np.ndarray:
    """``arr`` (uint8 image or mask, HxW[xC]) resized to ``size`` (a side, or ``[height, width]``)
    with PIL, bilinear (``nearest`` for masks and labels); unchanged when ``size`` is empty or met."""
    if not size:
        return arr
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if arr.shape[0] == h and arr.shape[1] == w:
        return np.ascontiguousarray(arr)
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(arr))
    return np.asarray(im.resize((w, h), Image.NEAREST if nearest else Image.BILINEAR))
