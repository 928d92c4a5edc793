"""Imagenette benchmark: the smallest ConvFirst, ConvNeXt and ResNet-18 at 64 px, then a report.

    python -m train.benchmark --data-dir ../shared/data/imagenette --out runs/bench-imagenette

Trains ``configs/cpu_small.py:MODEL`` for convfirst_atto, convnext_atto and resnet18 one after
the other (each ``python -m train`` in its own process, in ``OUT/MODEL``, so a rerun resumes
unfinished runs from their checkpoints), then writes
``OUT/report`` with ``python -m train.report`` (baseline: ResNet-18). Goal on a 2-core CPU:
the smallest ConvFirst reaches 60% top-1 within 15 minutes of training (read
``targets["0.6"]["wall_time_s"]`` in its summary.json, or the FLOPs-to-target table).

Not a test: it takes about ``--epochs`` x (9.5k images / measured images/s) per model.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import time
from collections.abc import Sequence

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("convfirst_atto", "convnext_atto", "resnet18")
CONFIG_FILE = REPO / "configs" / "cpu_small.py"


def run_one(model: str, data_dir: str, out: pathlib.Path, overrides: Sequence[str]) -> int:
    """Train one model into ``out/model``; returns the exit code of ``python -m train``."""
    cmd = [sys.executable, "-m", "train", "--config", f"{CONFIG_FILE}:{model}",
           "--workdir", str(out / model), f"--config.data_dir={data_dir}", *overrides]
    print(f"[benchmark] {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, cwd=REPO)
    print(f"[benchmark] {model}: exit code {rc} after {time.perf_counter() - t0:.0f} s",
          flush=True)
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="ImageNet-layout folder (Imagenette)")
    parser.add_argument("--out", default="runs/bench-imagenette", help="output folder")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="models to train with configs/cpu_small.py (default: the three "
                             "CPU models)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per model (5)")
    parser.add_argument("--learning-rate", type=float, default=1e-2,
                        help="base AdamW rate per 256 images (peak = lr x batch / 256)")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--targets", default="0.4,0.5,0.6,0.7,0.8",
                        help="top-1 targets for FLOPs/time-to-target (fractions)")
    parser.add_argument("--extra", nargs="*", default=[],
                        help="more --config.KEY=VALUE overrides for every run")
    args = parser.parse_args(argv)

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"--config.num_epochs={args.epochs}",
                 f"--config.learning_rate={args.learning_rate}",
                 f"--config.num_workers={args.num_workers}",
                 f"--config.accuracy_targets={args.targets}",
                 "--config.eval_every_epochs=1", "--config.warmup_epochs=0.5",
                 "--config.progress_bar=false", "--config.log_every_steps=25",
                 *args.extra]
    failed = [m for m in args.models if run_one(m, args.data_dir, out, overrides) != 0]
    from train import report  # noqa: PLC0415
    runs = [out / m for m in args.models if (out / m / "summary.json").exists()]
    if runs:
        report.main([*map(str, runs), "--out", str(out / "report"), "--baseline", "resnet18"])
    if failed:
        print(f"[benchmark] failed runs: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
