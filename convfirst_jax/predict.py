"""Classify images with a trained run or imported PyTorch weights; prints the top-k classes.

    python -m convfirst_jax.predict IMAGE [IMAGE ...] --workdir RUN [--step latest|best|N]
    python -m convfirst_jax.predict IMAGE ... --weights FILE --model NAME [--classes FILE]

Each image gets the training run's eval transform (``convfirst_jax.transforms.eval_image``: short side
to ``image_size / crop_pct``, centre crop, ImageNet mean/std) and one batched forward pass;
class names come from the run's classes.json (``--classes`` for weights; indices otherwise).
A missing or undecodable image is one error line and exit code 2 (missing files are caught
before the model is loaded).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import numpy as np

from convfirst_jax import transforms
from convfirst_jax.models.inference import jitted_logits
from convfirst_jax.weights import run as run_lib


def preprocess(paths: Sequence[str | pathlib.Path], image_size: int,
               crop_pct: float | None = None) -> np.ndarray:
    """Files -> float32 (N, image_size, image_size, 3), normalised like the eval pipeline.

    Raises ValueError naming the first file that is missing or cannot be decoded.
    """
    crop = transforms.DEFAULT_CROP_PCT if crop_pct is None else crop_pct
    images = []
    for path in paths:
        p = pathlib.Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"image {str(p)!r} does not exist")
        img, ok = transforms.eval_image(p.read_bytes(), image_size, crop)
        if not ok:
            raise ValueError(f"cannot decode image {str(p)!r} (not a JPEG/PNG PIL can read?)")
        images.append(img)
    return transforms.normalize(np.stack(images))


def top_k(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, softmax probabilities) of the k largest logits per row, best first."""
    k = min(k, logits.shape[1])
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probs, order, axis=1)


def predict(run, paths: Sequence[str | pathlib.Path], *, k: int = 5,
            crop_pct: float | None = None) -> list[list[dict]]:
    """Top-k predictions per image: ``[{"class", "index", "prob"}, ...]`` for each path."""
    x = preprocess(paths, run.image_size, crop_pct)
    logits = jitted_logits(run.model)(x)
    idx, probs = top_k(np.asarray(logits, np.float32), k)
    return [[{"class": run.classes[int(i)] if int(i) < len(run.classes) else str(int(i)),
              "index": int(i), "prob": float(p)} for i, p in zip(row_i, row_p)]
            for row_i, row_p in zip(idx, probs)]


def _main(argv: Sequence[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convfirst_jax.predict",
                                     description="Print the top-k classes of each image.")
    parser.add_argument("images", nargs="+", help="image files (JPEG / PNG)")
    run_lib.add_model_arguments(parser)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--crop-pct", type=float, default=None,
                        help="eval crop fraction (default 0.875, as in training)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    for path in args.images:   # bad paths fail before the model is loaded
        if not pathlib.Path(path).is_file():
            raise FileNotFoundError(f"image {path!r} does not exist")
    run = run_lib.model_from_args(args)
    results = predict(run, args.images, k=args.top_k, crop_pct=args.crop_pct)
    if args.json:
        print(json.dumps([{"image": str(p), "top": r} for p, r in zip(args.images, results)],
                         indent=1))
        return 0
    print(format_predictions(args.images, results))
    return 0


def format_predictions(paths: Sequence[str], results: list[list[dict]]) -> str:
    """Text report: each path, then ``  rank. probability  class name (index)`` lines."""
    lines = []
    for path, rows in zip(paths, results):
        lines.append(str(path))
        lines += [f"  {rank}. {r['prob']:7.2%}  {r['class']} ({r['index']})"
                  for rank, r in enumerate(rows, 1)]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit code (2 for bad arguments / files)."""
    return run_lib.run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
