"""timm model names checked without importing timm (which brings torch and torchvision:
seconds), so ``hemaflow validate`` and a fully cached run stay light.

The list is written once per installed timm version to ``<cache>/meta/timm-<version>-models.txt``
(the cache directory of :func:`hemaflow.core.cache.default_cache_dir`) and read from there
afterwards. A name missing from the list is still checked against timm itself by the caller,
so the list only speeds up the common case and never decides alone that a name is unknown.
"""

from __future__ import annotations

import difflib
import sys
from importlib import metadata
from pathlib import Path

from typing import Any

from hemaflow.core.errors import DataError, HemaflowError

_MEMO: dict[str, frozenset[str]] = {}


def _list_path(version: str) -> Path:
    from hemaflow.core.cache import default_cache_dir

    return default_cache_dir() / "meta" / f"timm-{version}-models.txt"


def known_timm_models() -> frozenset[str]:
    """Architecture names timm registers (``timm.list_models()``), from the per-version list
    when there is one; else from timm, writing the list for next time (best effort)."""
    try:
        version = metadata.version("timm")
    except metadata.PackageNotFoundError:
        return frozenset()
    if version in _MEMO:
        return _MEMO[version]
    path = _list_path(version)
    names: frozenset[str] | None = None
    if "timm" not in sys.modules:  # once timm is imported, asking it costs nothing
        try:
            names = frozenset(path.read_text().split())
        except OSError:
            names = None
    if not names:
        import timm

        names = frozenset(timm.list_models())
        try:
            from hemaflow.core import atomic

            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_text(path, "\n".join(sorted(names)) + "\n", fsync=False)
        except OSError:  # a read-only cache: the list is only a speed-up
            pass
    _MEMO[version] = names
    return names


def check_model_name(name: str) -> None:
    """Raise :func:`timm_model_problem`'s message (close-name suggestions) if ``name`` is not a timm
    model this machine can build; a name in :func:`known_timm_models` passes without importing timm."""
    problem = timm_model_problem(name)
    if problem:
        raise HemaflowError(problem)


def pretrained_error(name: str) -> HemaflowError:
    """The error for a request to download pretrained weights of timm model ``name``."""
    return HemaflowError(
        f"pretrained weights for {name!r} cannot be downloaded: hemaflow runs offline. Save them once on a "
        f"machine with network access, e.g. `python -c \"import timm, safetensors.torch as st; "
        f"m = timm.create_model('{name}', pretrained=True); st.save_file(m.state_dict(), '{name}.safetensors')\"`, "
        f"then set `pretrained: /path/to/{name}.safetensors` (a local .safetensors, .pth or .bin file)")


# -- the one weights loader ----------------------------------------------------------------------
HUB_PREFIXES = ("hf-hub:", "hf_hub:", "timm/", "http://", "https://")


def timm_model_problem(name: str) -> str | None:
    """A message when ``name`` is not a timm model this machine can build, else None (the one
    model-name check: :func:`check_model_name` raises it)."""
    from hemaflow.lib.backbones import known_timm_models

    if name.startswith(HUB_PREFIXES):
        return (f"{name!r} is a hub model; hemaflow never downloads weights: give a timm architecture name "
                "in `model` and the local weights file in `checkpoint`")
    base = name.split(".")[0]
    if base in known_timm_models():  # validate need not import timm (and torch) for a known name
        return None
    import timm

    if timm.is_model(base):
        return None
    close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6) or \
        timm.list_models(f"*{base.split('_')[0]}*")[:3]
    hint = "; did you mean " + " or ".join(repr(c) for c in close) + "?" if close else \
        " (see timm.list_models())"
    return f"unknown timm model {name!r}{hint}"


HEAD_PREFIXES = ("dino_head.", "ibot_head.")  # DINO/iBOT projection heads of a self-supervised checkpoint


def weights_sha256(path: str | Path) -> str:
    """SHA-256 of a weights file's content (streamed in 8 MiB blocks: a ViT-G file is 4.5 GB),
    remembered per stat signature within the process and in the cache directory
    (:func:`hemaflow.core.filehash.file_sha256`). Part of the cache key of every step that loads
    the file, so new weights at the same path recompute, and the same weights are recognised
    under any name."""
    from hemaflow.core.filehash import file_sha256

    return file_sha256(Path(path).expanduser().resolve())


def checkpoint_file(checkpoint: str | Path) -> Path:
    """The weights file ``checkpoint`` names: the file itself, or the one ``.safetensors`` file of a
    directory (a hemaflow Model artifact).

    Raises:
        DataError: missing file, a hub name (never downloaded), or a directory without exactly one file.
    """
    text = str(checkpoint)
    path = Path(text).expanduser()
    if not path.exists():
        if text.startswith(HUB_PREFIXES):
            raise DataError(text, "hub weights cannot be downloaded here (no network at run time); download the "
                            "file on a machine with access and set `checkpoint` to its local path")
        raise DataError(path, "checkpoint file not found")
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if len(files) != 1:
            raise DataError(path, f"directory holds {len(files)} .safetensors files; name one in `checkpoint`")
        path = files[0]
    return path


def read_state_dict(path: Path) -> tuple[dict[str, Any], str]:
    """Read a checkpoint file into a flat state dict; return it and its layout.

    Layouts: ``safetensors``; ``state_dict`` (a torch file holding the dict itself, or under
    ``state_dict_ema``/``state_dict``/``model_state_dict``/``model``); ``dino_teacher`` (a DINO /
    DINOv2 / DinoBloom training checkpoint: ``{"teacher": {"backbone.<timm ViT keys>", "dino_head.*",
    "ibot_head.*"}}``; the teacher is the network these methods release, its heads are dropped).
    """
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), "safetensors"
        except Exception as exc:
            raise DataError(path, f"cannot read safetensors checkpoint ({exc})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(path, f"cannot read checkpoint ({type(exc).__name__}: {exc}); expected a .safetensors "
                        "file or a torch state dict (.pth/.pt/.bin)") from None
    layout = "state_dict"
    if isinstance(obj, dict) and isinstance(obj.get("teacher"), dict):
        obj, layout = obj["teacher"], "dino_teacher"
    else:
        for key in ("state_dict_ema", "state_dict", "model_state_dict", "model"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        raise DataError(path, f"checkpoint holds a {type(obj).__name__}, not a state dict")
    if layout == "dino_teacher":
        obj = {k: v for k, v in obj.items() if not k.startswith(HEAD_PREFIXES)}
    return obj, layout


def load_backbone_weights(model: Any, checkpoint: str | Path, *, skip_head: bool = False) -> dict[str, Any]:
    """Load a local checkpoint into a timm backbone built with ``num_classes=0``.

    The one weights loader of hemaflow's encoders (``embeddings``, ``instance_encoder``,
    end-to-end MIL). ``checkpoint`` is a ``.safetensors`` file (a hemaflow checkpoint: the
    backbone may sit under a prefix such as ``backbone.`` or ``encoder.``, found automatically), a
    torch state dict file (``.pth``/``.pt``/``.bin``, e.g. timm or torchvision weights downloaded
    elsewhere), a DINO/DINOv2/DinoBloom training checkpoint (``{"teacher": {"backbone.*", ...}}``,
    heads dropped), or a directory holding exactly one ``.safetensors`` file (a hemaflow Model
    artifact). For timm ViTs the weights go through timm's own ``checkpoint_filter_fn`` first:
    original DINOv2 names (``mask_token``, SwiGLU ``w12``/``w3`` of ViT-G) are converted and the
    position embeddings resampled when the checkpoint's grid differs from the model's
    (``pos_embed`` (1, 257, d) is 16 x 16 patches of 14 px + the class token: 224 px). Head weights
    (classifier) and other modules are ignored; every backbone weight must be found with the right
    shape.

    ``skip_head``: the model's classifier (``get_classifier()``) keeps its initialisation and is
    not looked for in the file (a classifier built with ``num_classes > 0`` on pretrained weights).

    Returns a small report: ``{"path", "sha256", "prefix", "layout", "ignored_keys"}``.

    Raises:
        DataError: the file is missing, is a hub name, or does not fit the model.
    """
    path = checkpoint_file(checkpoint)
    state, layout = read_state_dict(path)
    target = model.state_dict(keep_vars=True)
    head = model.get_classifier() if skip_head and hasattr(model, "get_classifier") else None
    if head is not None and hasattr(head, "state_dict"):
        head_ids = {id(v) for v in head.state_dict(keep_vars=True).values()}
        target = {k: v for k, v in target.items() if id(v) not in head_ids}
    want = set(target)
    best_prefix, best_hits = "", -1
    prefixes = {""} | {k[: k.index(".") + 1] for k in state if "." in k}
    prefixes |= {k[: k.index(".", k.index(".") + 1) + 1] for k in state if k.count(".") >= 2}
    for pre in sorted(prefixes):
        hits = sum(1 for k in state if k.startswith(pre) and k[len(pre):] in want)
        if hits > best_hits:
            best_prefix, best_hits = pre, hits
    mapped = {k[len(best_prefix):]: v for k, v in state.items() if k.startswith(best_prefix)}
    mapped = _timm_filter(model, mapped, path)
    missing = [k for k in target if k not in mapped]
    bad_shape = [f"{k} {tuple(mapped[k].shape)} vs {tuple(target[k].shape)}" for k in target
                 if k in mapped and tuple(mapped[k].shape) != tuple(target[k].shape)]
    if missing or bad_shape:
        msg = f"checkpoint does not fit the model ({len(missing)} weight(s) missing, {len(bad_shape)} of wrong shape"
        msg += f"; e.g. {(missing + bad_shape)[:3]})"
        raise DataError(path, msg + "; is `model` the architecture the checkpoint was trained with?")
    model.load_state_dict({k: mapped[k] for k in target}, strict=not skip_head)
    return {"path": str(path), "sha256": weights_sha256(path), "prefix": best_prefix, "layout": layout,
            "ignored_keys": len(state) - len(target)}


def _timm_filter(model: Any, state: dict[str, Any], path: Path) -> dict[str, Any]:
    """timm's own checkpoint conversion for its ViTs (DINOv2 names, position-embedding resampling)."""
    try:
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
    except ImportError:  # pragma: no cover - timm without ViTs
        return state
    if not isinstance(model, VisionTransformer):
        return state
    try:
        return checkpoint_filter_fn(dict(state), model)
    except Exception as exc:
        raise DataError(path, f"cannot convert the ViT checkpoint for this model ({type(exc).__name__}: {exc})") from None


def build_backbone(name: str, *, size: int | None = None, checkpoint: str | Path | None = None,
                   seed: int | None = None) -> tuple[Any, dict[str, Any]]:
    """A timm backbone without classifier (``num_classes=0``), offline.

    ``size`` (the input side) is passed as ``img_size`` to architectures that take it (ViTs,
    whose position embeddings depend on it; DinoBloom and DINOv2 are used at 224); convnets do
    not need it. Random init (under ``seed`` when given), then ``checkpoint`` through
    :func:`load_backbone_weights`. Returns the model (in train mode) and what was loaded.
    """
    import timm
    import torch

    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            model = timm.create_model(name, img_size=size, **kwargs) if size else timm.create_model(name, **kwargs)
        except TypeError:  # architectures without an img_size argument (convnets)
            if seed is not None:
                torch.manual_seed(seed)
            model = timm.create_model(name, **kwargs)
    info: dict[str, Any] = {"init": "random", **({"init_seed": seed} if seed is not None else {})}
    if checkpoint:
        info = {"init": "checkpoint", **load_backbone_weights(model, checkpoint)}
    return model, info


def create_backbone(name: str, *, num_classes: int = 0, pretrained: str | bool | None = None,
                    img_size: int | None = None, drop_rate: float = 0.0) -> Any:
    """hemaflow's one backbone factory: timm model ``name``, offline.

    Args:
        name: any ``timm.list_models()`` name (``test_resnet``, ``resnet50``, ``vit_small_patch16_224``...).
        num_classes: classifier outputs; 0 (encoders) returns ``num_features``-dim pooled features.
        pretrained: a local weights file (.safetensors/.pth/.bin, a DINO/DinoBloom checkpoint...),
            read by :func:`load_backbone_weights`: every backbone weight must fit; a classifier head
            keeps its initialisation. ``True`` is an error: nothing is downloaded.
        img_size: input size for models that take it (ViTs: position embeddings); ignored by CNNs.
        drop_rate: dropout before the classifier (``num_classes > 0``).

    Raises:
        HemaflowError: unknown name (with suggestions) or a download request;
        DataError: a weights file that is missing, unreadable or does not fit (naming the file).
    """
    import timm

    if pretrained is True:
        raise pretrained_error(name)
    check_model_name(name.split(".")[0])
    checkpoint = str(pretrained) if pretrained else None
    if checkpoint and not Path(checkpoint).expanduser().exists():
        raise DataError(Path(checkpoint).expanduser(), "pretrained weights file not found; `pretrained` must be a "
                        "local file (.safetensors, .pth or .bin); nothing is downloaded")
    if num_classes == 0:
        return build_backbone(name, size=img_size, checkpoint=checkpoint)[0]
    extra: dict[str, Any] = {}
    if img_size:  # probe: CNNs take any size and do not accept img_size (the order of draws kept as it was)
        try:
            timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=img_size)
            extra = {"img_size": img_size}
        except TypeError:
            pass
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate, **extra)
    if checkpoint:
        load_backbone_weights(model, checkpoint, skip_head=True)
    return model
