"""Interleaved A/B of one CPU-path change in the train step, one process, same batch.

    python scripts/ab_cpu_paths.py --change layer_norm_stats --models convnext_atto \
        --rounds 10 --out docs/results/cpu-imagenette-64px/ab_layer_norm_stats.md

Changes (``--change``), each against the code before it, put back with ``mock.patch`` while the
baseline step is traced:

- ``conv_kernel_grad`` (2026-12-07): dense convs' kernel gradient as per-tap matmuls
  (:func:`convfirst_jax.models.cpu_paths.conv_matmul_kernel_grad`) against the library conv's
  autodiff. ``ab_conv_kernel_grad.md`` was made by this script under its earlier name,
  ``scripts/ab_conv_kernel_grad.py`` (the same comparison).
- ``layer_norm_stats`` (2026-12-08): the LayerNorm's mean and variance as matmuls with a column
  of 1/C (:func:`convfirst_jax.models.norms._feature_mean`) against reductions.

Both steps are compiled first; then each round times ``--steps`` steps of each (the order
alternates between rounds) and the per-round ratio baseline / change is the speed-up.
The host-memory setting (:mod:`convfirst_jax.host_memory`) is on, as in ``python -m train``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import pathlib
import statistics
import sys
from unittest import mock

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from convfirst_jax import host_memory  # noqa: E402

HOST_MEMORY = host_memory.reuse_host_memory()  # before JAX's CPU client starts

import jax  # noqa: E402

from convfirst_jax.bench.train_compare import make_jax_train_step, time_steps  # noqa: E402
from convfirst_jax.models import cpu_paths, norms  # noqa: E402


def _mean_by_reduction(x: jax.Array) -> jax.Array:
    return x.mean(-1, keepdims=True)


#: change -> (title, baseline label, change label, patch that restores the baseline)
CHANGES = {
    "conv_kernel_grad": (
        "dense-conv kernel gradient as per-tap matmuls vs autodiff", "autodiff", "matmul",
        lambda: mock.patch.object(cpu_paths, "conv_matmul_kernel_grad",
                                  cpu_paths._library_conv)),
    "layer_norm_stats": (
        "LayerNorm mean / variance as matmuls vs reductions", "reduce", "dot",
        lambda: mock.patch.object(norms, "_feature_mean", _mean_by_reduction)),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--change", choices=sorted(CHANGES), required=True)
    ap.add_argument("--models", nargs="+", default=["resnet18", "convnext_atto"])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args()
    title, base, new, restore = CHANGES[args.change]
    lines = [f"# A/B: {title} "
             f"({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"jax {jax.__version__}, {os.cpu_count()} CPUs, batch 64, 64 px, float32, "
             f"{args.rounds} interleaved rounds of {args.steps} steps, one process; "
             f"host memory {HOST_MEMORY}.",
             f"Command: `python scripts/ab_cpu_paths.py {' '.join(sys.argv[1:])}`", "",
             f"| model | {base} ms / step | {new} ms / step | speed-up (median of rounds) "
             "| per-round speed-ups |", "|---|---|---|---|---|"]
    for model in args.models:
        steps = {}
        for variant in (base, new):
            patch = restore() if variant == base else contextlib.nullcontext()
            with patch:  # the CPU paths are chosen while the step is traced (compiled here)
                steps[variant] = make_jax_train_step(model, batch_size=64, resolution=64,
                                                     num_classes=10)
            for _ in range(3):  # warm-up: compiled, and the heap settled
                steps[variant]()
        times = {v: [] for v in steps}
        for r in range(args.rounds):
            for v in ((base, new) if r % 2 == 0 else (new, base)):
                times[v].append(time_steps(steps[v], args.steps)[0])
        ratios = [a / b for a, b in zip(times[base], times[new])]
        row = (f"| {model} | {1e3 * statistics.median(times[base]):.0f} "
               f"| {1e3 * statistics.median(times[new]):.0f} "
               f"| {statistics.median(ratios):.2f}x | {', '.join(f'{q:.2f}' for q in ratios)} |")
        lines.append(row)
        print(row, flush=True)
        # after every model, so a stopped run keeps the rows it finished
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
