"""GPU check: the learned parts of hemaflow on the accelerator, against the CPU (issue 17).

Run:  python benchmarks/gpu_check.py [--quick] [--json /tmp/gpu_check.json]

Three parts, each on the CPU (float32, and bfloat16 autocast) and, when CUDA is there, on the
GPU (float32, and bfloat16 autocast), with the agreement of every variant with CPU float32:

* ``deeplab``: the shipped ``wbc-v1`` segmenter (DeepLabV3+, what ``device: auto`` runs for
  ``deeplabv3`` steps) on real BCCD fields (``../shared/data``, else synthetic fields):
  fields/s, and pixel agreement / white-cell Dice of the masks with CPU float32's.
* ``embeddings``: timm resnet50 and vit_small_patch16_224 (random weights: nothing is
  downloaded) on 224 px crops, batch 32, as ``timm_embeddings`` runs them: images/s, and the
  cosine similarity of the embeddings with CPU float32's.
* ``encoder``: ``instance_encoder`` with weak pre-training (the headline's encoder step) on the
  run's device: seconds, and the cosine of its embeddings with CPU's.
* ``mil``: one epoch of ``gated_attention_mil`` (the headline's aggregator) on synthetic bags
  through the component, as a recipe runs it: seconds, and the largest difference of the
  predicted probabilities from CPU's.

Without CUDA it runs on the CPU alone and says so; that run still measures bfloat16 autocast
on this CPU (a gain needs AMX or AVX512-BF16; elsewhere it is slower). Agreement criteria:
masks >= 99% of pixels equal in float32, embeddings cosine >= 0.999 in float32 (>= 0.99 in
bfloat16), MIL probabilities within 1e-3 in float32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


def autocast(device: str, bf16: bool):
    import contextlib

    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def best_time(fn: Callable[[], Any], reps: int, sync: Callable[[], None]) -> tuple[float, Any]:
    """Best of ``reps`` timed calls after one warm-up call; returns (seconds, last output)."""
    out = fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best, out


def variants(cuda: bool) -> list[tuple[str, str, bool]]:
    rows = [("cpu fp32", "cpu", False), ("cpu bf16", "cpu", True)]
    if cuda:
        rows += [("cuda fp32", "cuda", False), ("cuda bf16", "cuda", True)]
    return rows


def sync_for(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


# -- parts -----------------------------------------------------------------------------------------
def fields(n: int) -> tuple[list[np.ndarray], str]:
    from hemaflow.lib import imageio as io

    files = sorted((SHARED / "bccd-fields" / "images").glob("*.jpg"))[:n]
    if files:
        return [io.read_image(f) for f in files], f"{len(files)} BCCD fields 640x480"
    from hemaflow.lib.smear_generator import render_field  # type: ignore[attr-defined]

    rng = np.random.default_rng(0)
    return [render_field(rng, 512)[0] for _ in range(n)], f"{n} synthetic fields 512 px"


def part_deeplab(cuda: bool, quick: bool) -> dict[str, Any]:
    import torch

    from hemaflow.plugins.segment.learned import load_weights, predict_with_meta

    imgs, what = fields(4 if quick else 16)
    out: dict[str, Any] = {"input": what, "rows": {}}
    ref: list[np.ndarray] | None = None
    for name, device, bf16 in variants(cuda):
        net, info = load_weights("wbc-v1", device)

        def run() -> list[np.ndarray]:
            with torch.inference_mode(), autocast(device, bf16):
                return [predict_with_meta(net, im, info, device=device, tile=1024) for im in imgs]

        secs, masks = best_time(run, 1 if quick else 3, sync_for(device))
        row: dict[str, Any] = {"fields_per_s": round(len(imgs) / secs, 2)}
        if ref is None:
            ref = masks
        else:
            eq = np.mean([np.mean(a == b) for a, b in zip(masks, ref)])
            inter = sum(int(((a > 0) & (b > 0)).sum()) for a, b in zip(masks, ref))
            total = sum(int((a > 0).sum() + (b > 0).sum()) for a, b in zip(masks, ref))
            row.update(pixel_agreement=round(float(eq), 5), dice_vs_cpu_fp32=round(2 * inter / max(total, 1), 5))
        out["rows"][name] = row
    return out


def part_embeddings(cuda: bool, quick: bool) -> dict[str, Any]:
    import timm
    import torch

    n = 64 if quick else 256
    rng = np.random.default_rng(0)
    x_all = torch.from_numpy(rng.random((n, 3, 224, 224), dtype=np.float32))
    out: dict[str, Any] = {"input": f"{n} random 224 px crops, batch 32", "models": {}}
    for model_name in ("resnet50", "vit_small_patch16_224"):
        torch.manual_seed(0)
        base = timm.create_model(model_name, pretrained=False, num_classes=0).eval()
        rows: dict[str, Any] = {}
        ref: torch.Tensor | None = None
        for name, device, bf16 in variants(cuda):
            model = base.to(device)
            x_dev = x_all.to(device)

            def run() -> torch.Tensor:
                chunks = []
                with torch.inference_mode(), autocast(device, bf16):
                    for i in range(0, n, 32):
                        chunks.append(model(x_dev[i:i + 32]).float().cpu())
                return torch.cat(chunks)

            secs, emb = best_time(run, 1 if quick else 2, sync_for(device))
            row: dict[str, Any] = {"images_per_s": round(n / secs, 1)}
            if ref is None:
                ref = emb
            else:
                cos = torch.nn.functional.cosine_similarity(emb, ref, dim=1)
                row.update(cosine_min=round(float(cos.min()), 5), cosine_mean=round(float(cos.mean()), 5))
            rows[name] = row
        base.to("cpu")
        out["models"][model_name] = rows
    return out


def part_mil(cuda: bool, quick: bool) -> dict[str, Any]:
    from hemaflow.core.plugins import get_registry
    from hemaflow.testing import make, make_context
    from tests.plugins.mil_helpers import kfold_split, synthetic_instances

    cls = get_registry().get("mil", "gated_attention_mil")
    out: dict[str, Any] = {"input": "", "rows": {}}
    ref = None
    with tempfile.TemporaryDirectory() as tmp:
        n_pat = 24 if quick else 96
        feats, _ = synthetic_instances(Path(tmp) / "d", n_patients=n_pat, cells=(50, 200), dim=512)
        pats = sorted(feats.table["patient_id"].unique())
        labels = [feats.table.loc[feats.table["patient_id"] == p, "label"].iloc[0] for p in pats]
        split = kfold_split(Path(tmp) / "s", pats, labels, k=2)
        out["input"] = f"{n_pat} patients, {len(feats.table)} cells x 512 features, 2 folds, 1 epoch each"
        for name, device, _ in [v for v in variants(cuda) if not v[2]]:  # autocast is the trainer's own `amp`
            sync = sync_for(device)
            t0 = time.perf_counter()
            res = make(cls, epochs=1, gallery_patients=0).run(
                make_context(Path(tmp) / name.replace(" ", "_"), device=device), split=split, features=feats)
            sync()
            secs = time.perf_counter() - t0
            t = res["predictions"].table
            probs = t[[c for c in t.columns if c.startswith("prob_")]].to_numpy(float)
            row: dict[str, Any] = {"seconds": round(secs, 2)}
            if ref is None:
                ref = probs
            else:
                row["max_abs_prob_diff"] = float(np.abs(probs - ref).max())
            out["rows"][name] = row
    return out


def part_encoder(cuda: bool, quick: bool) -> dict[str, Any]:
    """``instance_encoder`` with weak pre-training (the headline's encoder step) on the run's device:
    seconds, and the cosine of its embeddings with CPU float32's (training on another device
    drifts a little, so the bar is the bf16 one)."""
    from hemaflow.plugins.encoders import InstanceEncoder
    from hemaflow.testing import make, make_context
    from tests.plugins.mil_helpers import kfold_split, synthetic_instances

    out: dict[str, Any] = {"input": "", "rows": {}}
    ref = None
    with tempfile.TemporaryDirectory() as tmp:
        n_pat = 8 if quick else 24
        _, cells = synthetic_instances(Path(tmp) / "d", n_patients=n_pat, cells=(20, 40), crop_size=64)
        pats = sorted(cells.table["patient_id"].unique())
        labels = [cells.table.loc[cells.table["patient_id"] == p, "label"].iloc[0] for p in pats]
        split = kfold_split(Path(tmp) / "s", pats, labels, k=2)
        out["input"] = f"{len(cells.table)} cells of 64 px, test_efficientnet, weak, 2 folds x 2 epochs"
        for name, device, _ in [v for v in variants(cuda) if not v[2]]:
            sync = sync_for(device)
            t0 = time.perf_counter()
            res = make(InstanceEncoder, backbone="test_efficientnet", image_size=64, epochs=2, batch_size=32,
                       pretrain="weak").run(make_context(Path(tmp) / name.replace(" ", "_"), device=device),
                                            cells=cells, split=split)
            sync()
            emb = res["embeddings"]
            x = emb.table[emb.feature_columns].to_numpy(np.float64)
            row: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 2)}
            if ref is None:
                ref = x
            else:
                cos = (x * ref).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
                row["cosine_min"] = float(cos.min())
            out["rows"][name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer images and repetitions (a minute or two on CPU)")
    ap.add_argument("--only", default="deeplab,embeddings,encoder,mil")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", type=Path, default=Path("/tmp/gpu_check.json"))
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    from hemaflow.core.runner import resolve_device

    report: dict[str, Any] = {
        "torch": torch.__version__, "cuda": cuda, "device_auto": resolve_device("auto"),
        "gpu": torch.cuda.get_device_name(0) if cuda else None, "cpu_threads": torch.get_num_threads(),
        "cpu_bf16_kernels": bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "load": round(os.getloadavg()[0], 1), "notes": []}
    if not cuda:
        report["notes"].append("no CUDA device: CPU rows only (fp32 and bf16 autocast); run again on a GPU machine")
    parts = {"deeplab": part_deeplab, "embeddings": part_embeddings, "encoder": part_encoder, "mil": part_mil}
    for name in args.only.split(","):
        print(f"== {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            report[name] = parts[name](cuda, args.quick)
        except Exception as exc:  # one broken part must not hide the others' numbers
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        report[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(report[name], indent=1), flush=True)
    checks = []
    for name, row in (report.get("deeplab", {}).get("rows") or {}).items():
        if "pixel_agreement" in row and "fp32" in name:
            checks.append((f"deeplab {name} pixels", row["pixel_agreement"] >= 0.99))
    for model, rows in (report.get("embeddings", {}).get("models") or {}).items():
        for name, row in rows.items():
            if "cosine_min" in row:
                checks.append((f"{model} {name} cosine", row["cosine_min"] >= (0.999 if "fp32" in name else 0.99)))
    for name, row in (report.get("encoder", {}).get("rows") or {}).items():
        if "cosine_min" in row:
            checks.append((f"instance_encoder {name} cosine", row["cosine_min"] >= 0.99))
    for name, row in (report.get("mil", {}).get("rows") or {}).items():
        if "max_abs_prob_diff" in row:
            checks.append((f"mil {name} probs", row["max_abs_prob_diff"] <= 1e-3))
    report["agreement"] = {k: v for k, v in checks}
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print("\nsummary:")
    for name in ("deeplab", "embeddings", "encoder", "mil"):
        part = report.get(name)
        if not part:
            continue
        if "error" in part:
            print(f"  {name}: error {part['error']}")
            continue
        for model, rows in (part.get("models") or {name: part.get("rows", {})}).items():
            for vname, row in rows.items():
                print(f"  {model:24s} {vname:10s} " + "  ".join(f"{k}={v}" for k, v in row.items()))
    for model, rows in (report.get("embeddings", {}).get("models") or {}).items():
        if "cpu bf16" in rows:
            print(f"  bf16/fp32 CPU speed ratio {model}: {rows['cpu bf16']['images_per_s'] / rows['cpu fp32']['images_per_s']:.2f}x")
    dl = (report.get("deeplab", {}).get("rows") or {})
    if "cpu bf16" in dl:
        print(f"  bf16/fp32 CPU speed ratio wbc-v1: {dl['cpu bf16']['fields_per_s'] / dl['cpu fp32']['fields_per_s']:.2f}x")
    bad = [k for k, ok in checks if not ok]
    print(f"agreement: {len(checks) - len(bad)}/{len(checks)} checks pass" + (f"; failing: {bad}" if bad else ""))
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
