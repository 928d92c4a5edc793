"""Evaluate a trained run (or imported PyTorch weights) on an ImageNet-style folder.

    python -m train.evaluate --workdir RUN [--step latest|best|N] [--data-dir DIR]
    python -m train.evaluate --weights FILE --model NAME --data-dir DIR [--image-size 224]

Reports top-1 / top-5 / cross-entropy over ``DATA_DIR/val`` (every image once), per-class
top-1, and images/s: end to end (decode + forward) and of the forward pass alone. The data
pipeline is the training run's eval pipeline (``train.data.build_eval_loader``: resize the
short side to ``image_size / crop_pct``, centre crop, ImageNet mean/std); the default data
dir and image size are the run's. Labels are the indices of the sorted ``DATA_DIR/train``
class folders (the training convention); for PyTorch weights whose classes are in another
order, ``--label-map FILE`` (JSON ``{folder name: model class index}``) maps them.
Unreadable images are counted and left out. ``--json OUT`` writes everything as JSON.
Exit codes: 0 done, 2 bad arguments / paths.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from convfirst_jax import transforms
from convfirst_jax.models.inference import jitted_logits
from convfirst_jax.weights import run as run_lib
from train import data as data_lib


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def summarize(logits: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Top-1 / top-5 / cross-entropy / per-class top-1 of (N, C) logits and (N,) labels.

    Ties are broken towards the lower class index (a stable descending sort).
    """
    n, c = logits.shape
    order = np.argsort(-logits, axis=1, kind="stable")
    k5 = min(5, c)
    top1 = order[:, 0] == labels
    top5 = (order[:, :k5] == labels[:, None]).any(axis=1)
    loss = -_log_softmax(logits.astype(np.float64))[np.arange(n), labels]
    per_class = []
    for i, name in enumerate(class_names):
        mask = labels == i
        if mask.any():
            per_class.append({"class": name, "index": i, "count": int(mask.sum()),
                              "top1": float(top1[mask].mean())})
    return {"count": int(n), "top1": float(top1.mean()) if n else None,
            "top5": float(top5.mean()) if n else None,
            "loss": float(loss.mean()) if n else None, "per_class": per_class}


def _label_map(path: str | None, data_classes: list[str], num_classes: int) -> np.ndarray:
    """Data label -> model class index (identity without --label-map)."""
    if path is None:
        if len(data_classes) > num_classes:
            raise run_lib.RunError(
                f"the data has {len(data_classes)} classes but the model only {num_classes}")
        return np.arange(len(data_classes))
    p = pathlib.Path(path)
    if not p.is_file():
        raise run_lib.RunError(f"label map {str(p)!r} does not exist")
    mapping = json.loads(p.read_text())
    missing = [c for c in data_classes if c not in mapping]
    if missing:
        raise run_lib.RunError(f"{p} has no entry for class folders {missing[:5]}")
    out = np.array([int(mapping[c]) for c in data_classes])
    if (out < 0).any() or (out >= num_classes).any():
        raise run_lib.RunError(f"{p} maps to indices outside [0, {num_classes})")
    return out


def evaluate(run: run_lib.LoadedRun, data_dir: str, *, batch_size: int = 64,
             num_workers: int = 0, label_map: str | None = None,
             crop_pct: float = transforms.DEFAULT_CROP_PCT) -> dict[str, Any]:
    """Evaluate ``run.model`` on ``data_dir/val``; returns the metrics dict (see module doc)."""
    data_classes = data_lib.class_names(data_dir)
    num_classes = int(run.model.num_classes)
    if label_map is None and run.step >= 0 and data_classes != run.classes[:len(data_classes)]:
        raise run_lib.RunError(
            f"the class folders of {data_dir}/train differ from the run's classes.json "
            f"({data_classes[:3]}... vs {run.classes[:3]}...); evaluate on data with the "
            "run's classes, or pass --label-map")
    to_model = _label_map(label_map, data_classes, num_classes)
    loader = data_lib.build_eval_loader(data_dir, image_size=run.image_size,
                                        batch_size=batch_size, num_workers=num_workers,
                                        crop_pct=crop_pct)
    forward = jitted_logits(run.model)
    logits_all, labels_all = [], []
    forward_time, timed_images = 0.0, 0
    t_start = None
    for i, batch in enumerate(loader):
        if i == 1:
            t_start = time.perf_counter()     # after compile + loader start-up
        t0 = time.perf_counter()
        logits = np.asarray(jax.block_until_ready(forward(jnp.asarray(batch["image"]))))
        if i > 0:
            forward_time += time.perf_counter() - t0
            timed_images += len(batch["label"])
        keep = batch["valid"] > 0
        logits_all.append(logits[keep])
        labels_all.append(to_model[batch["label"][keep]])
    t_end = time.perf_counter()
    unreadable = int(loader.num_examples) - int(sum(len(x) for x in labels_all))
    logits = np.concatenate(logits_all) if logits_all else np.zeros((0, num_classes))
    labels = np.concatenate(labels_all) if labels_all else np.zeros((0,), int)
    names = list(run.classes)
    result = summarize(logits, labels, names)
    result.update({
        "model": run.config.get("model"), "step": run.step, "ema": run.ema,
        "data_dir": str(data_dir), "image_size": run.image_size, "crop_pct": crop_pct,
        "batch_size": batch_size, "unreadable": unreadable,
        "images_per_s": (timed_images / (t_end - t_start)) if t_start and timed_images
        else None,
        "forward_images_per_s": (timed_images / forward_time) if forward_time > 0 else None,
        "backend": jax.default_backend(),
    })
    return result


def format_report(r: dict[str, Any]) -> str:
    """Human-readable summary of :func:`evaluate`'s result."""
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    def rate(v):
        return "n/a (one batch: nothing after the compile to time)" if v is None else f"{v:.1f}"

    lines = [
        f"model {r['model']} (step {r['step']}{', EMA' if r['ema'] else ''}) on "
        f"{r['data_dir']}/val at {r['image_size']} px: {r['count']} images"
        + (f" ({r['unreadable']} unreadable, skipped)" if r["unreadable"] else ""),
        f"top-1 {pct(r['top1'])}  top-5 {pct(r['top5'])}  loss {r['loss']:.4f}"
        if r["count"] else "no readable images",
        f"images/s: {rate(r['images_per_s'])} end to end, {rate(r['forward_images_per_s'])} "
        f"forward only ({r['backend']}, batch {r['batch_size']})",
        "per-class top-1:",
    ]
    for c in r["per_class"]:
        lines.append(f"  {c['index']:4d} {c['class']:<30s} {pct(c['top1']):>8s}  "
                     f"({c['count']} images)")
    return "\n".join(lines)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train.evaluate",
        description="Top-1/top-5, per-class accuracy and images/s on DATA_DIR/val.")
    run_lib.add_model_arguments(parser)
    parser.add_argument("--data-dir", help="ImageNet-layout folder (default: the run's "
                        "data_dir; required with --weights)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0,
                        help="grain worker processes for decoding (0 = in-process)")
    parser.add_argument("--crop-pct", type=float, default=transforms.DEFAULT_CROP_PCT)
    parser.add_argument("--label-map", help="JSON {class folder: model class index}")
    parser.add_argument("--json", help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    run = run_lib.model_from_args(args)
    data_dir = args.data_dir
    if not data_dir:
        if args.weights:
            raise run_lib.RunError("--weights needs --data-dir DIR")
        data_dir = run.config.get("data_dir") or str(data_lib.ensure_synthetic_dataset())
    result = evaluate(run, data_dir, batch_size=args.batch_size, num_workers=args.num_workers,
                      label_map=args.label_map, crop_pct=args.crop_pct)
    print(format_report(result))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the exit code."""
    return run_lib.run_cli(_main, argv)


if __name__ == "__main__":
    # Run the copy imported as `train.evaluate` so grain workers unpickle by importable name.
    from train.evaluate import main as _entry

    sys.exit(_entry())
