"""Interleaved A/B of the CPU train step: dense convs' kernel gradient as per-tap matmuls
(:func:`convfirst_jax.models.cpu_paths.conv_matmul_kernel_grad`, "matmul") against the
library conv's autodiff ("autodiff", the code before 2026-12-07), one process, same batch.

    python scripts/ab_conv_kernel_grad.py --models resnet18 convnext_atto convfirst_atto \
        convfirst_atto_gw8 --rounds 6 --out docs/results/cpu-imagenette-64px/ab_conv_kernel_grad.md

Both steps are compiled first; then each round times 5 steps of each (the order alternates
between rounds) and the per-round ratio autodiff / matmul is the speed-up of the change.
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

import jax  # noqa: E402

from convfirst_jax.bench.train_compare import make_jax_train_step, time_steps  # noqa: E402
from convfirst_jax.models import cpu_paths  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "convnext_atto"])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    args = ap.parse_args()
    lines = [f"# A/B: dense-conv kernel gradient as per-tap matmuls vs autodiff "
             f"({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"jax {jax.__version__}, {os.cpu_count()} CPUs, batch 64, 64 px, float32, "
             f"{args.rounds} interleaved rounds of {args.steps} steps, one process.",
             f"Command: `python scripts/ab_conv_kernel_grad.py {' '.join(sys.argv[1:])}`", "",
             "| model | autodiff ms / step | matmul ms / step | speed-up (median of rounds) "
             "| per-round speed-ups |", "|---|---|---|---|---|"]
    for model in args.models:
        steps = {}
        for variant in ("autodiff", "matmul"):
            patch = (mock.patch.object(cpu_paths, "conv_matmul_kernel_grad",
                                       cpu_paths._library_conv)  # the baseline: autodiff
                     if variant == "autodiff" else contextlib.nullcontext())
            with patch:  # the conv paths are chosen while the step is traced (compiled here)
                steps[variant] = make_jax_train_step(model, batch_size=64, resolution=64,
                                                     num_classes=10)
            steps[variant]()
        times = {v: [] for v in steps}
        for r in range(args.rounds):
            for v in (("autodiff", "matmul") if r % 2 == 0 else ("matmul", "autodiff")):
                times[v].append(time_steps(steps[v], args.steps)[0])
        ratios = [a / b for a, b in zip(times["autodiff"], times["matmul"])]
        row = (f"| {model} | {1e3 * statistics.median(times['autodiff']):.0f} "
               f"| {1e3 * statistics.median(times['matmul']):.0f} "
               f"| {statistics.median(ratios):.2f}x | {', '.join(f'{q:.2f}' for q in ratios)} |")
        lines.append(row)
        print(row, flush=True)
        # after every model, so a stopped run keeps the rows it finished
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
