"""Segmenter weights files: the shipped weights (``hemaflow/weights/<name>.safetensors`` with a
``<name>.md`` card), resolving a name or a local path, reading and writing the ``hemaflow``
safetensors metadata (architecture, encoder, target, input-scale rule), and building the network
of a weights file. Used by the ``deeplabv3`` segmenter (:mod:`hemaflow.plugins.segment.learned`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hemaflow.core.errors import DataError, did_you_mean
from hemaflow.lib.seg_nets import build_model

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
"""Package folder of the shipped segmenter weights: ``<name>.safetensors`` + ``<name>.md`` (card)."""


def shipped_weights() -> dict[str, Path]:
    """Shipped weights by name (the file stem), e.g. ``{"wbc-v1": .../hemaflow/weights/wbc-v1.safetensors}``."""
    return {p.stem: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def resolve_weights(weights: str) -> Path:
    """The file of a shipped weights name or of a local ``.safetensors`` path.

    Raises:
        DataError: an unknown name (the message lists the shipped names) or a missing file.
    """
    shipped = shipped_weights()
    if weights in shipped:
        return shipped[weights]
    p = Path(weights).expanduser()
    if p.suffix == ".safetensors" or "/" in weights or "\\" in weights:
        if not p.is_file():
            raise DataError(p, "weights file not found (a local path must be an existing .safetensors file "
                            f"written by hemaflow; shipped names: {', '.join(shipped) or 'none'})")
        return p
    raise DataError(weights, f"unknown segmenter weights name{did_you_mean(weights, shipped)}; shipped "
                    f"weights: {', '.join(shipped) or 'none'} (or give a local .safetensors path)")


def read_weights_meta(path: Path | str) -> dict[str, Any]:
    """The ``hemaflow`` metadata (architecture, encoder, target, scale rule...) of a weights file."""
    import json

    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - an unreadable file is a data problem
        raise DataError(path, f"cannot read safetensors weights ({type(exc).__name__}: {exc})") from None
    if "hemaflow" not in md:
        raise DataError(path, "not a hemaflow segmenter weights file (its safetensors metadata has no "
                        "'hemaflow' entry); a file from a training run is <step>/model/model.safetensors "
                        "and is given as a model input instead")
    meta = json.loads(md["hemaflow"])
    for key in ("architecture", "encoder", "target"):
        if key not in meta:
            raise DataError(path, f"segmenter weights metadata has no {key!r}")
    return meta


def save_weights(net: Any, path: Path | str, meta: dict[str, Any], *, half: bool = True) -> Path:
    """Write ``net``'s state dict (floating tensors as fp16 when ``half``) with ``meta`` as metadata."""
    import json

    import torch
    from safetensors.torch import save_file

    state = {}
    for k, v in net.state_dict().items():
        v = v.detach().cpu()
        state[k] = (v.half() if half and v.is_floating_point() else v).contiguous()
    save_file(state, str(path), metadata={"hemaflow": json.dumps(meta, sort_keys=True)})
    del torch
    return Path(path)


def load_weights(weights: str, device: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """Build the network of shipped weights (by name) or of a local .safetensors file.

    Returns:
        (model in eval mode, float32, on ``device``; its metadata dict).

    Example::

        net, meta = load_weights("wbc-v1")
        mask = predict_with_meta(net, rgb_uint8, meta)   # uint8 0/1/2
    """
    from safetensors.torch import load_file

    path = resolve_weights(weights)
    meta = read_weights_meta(path)
    net = build_model(meta["architecture"], meta["encoder"], 1 if meta["target"] == "cell" else 3,
                      **meta.get("model_kwargs", {}))
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise DataError(path, f"weights do not fit {meta['architecture']}-{meta['encoder']} "
                        f"({str(exc).splitlines()[0]})") from None
    net.eval()
    return net.to(device), dict(meta, weights=str(weights))

