r"""The accuracy-complexity study: four models, one recipe, one command, one results page.

    python -m train.study --data-dir ../shared/data/imagenette \
        --out runs/study-cpu-imagenette-64px --results docs/results/cpu-imagenette-64px

Trains ``configs.study_cpu_imagenette.STUDY_MODELS`` (resnet18, convfirst_atto, convnext_atto,
convfirst_atto_gw8) one after the other with ``configs/study_cpu_imagenette.py`` (only
``model`` differs), each as its own ``python -m train`` process with its progress bar. The
sweep is resumable: ``OUT/sweep.json`` records every run; a finished run (``python -m train``
wrote its summary.json) is skipped and an unfinished one resumes from its newest checkpoint, so
rerunning the same command after a kill continues where it stopped. After each run it times
the model's forward pass on this CPU at batch 1 and 64 (``OUT/NAME/latency.json``); at the end
it writes the results page (``python -m train.report``: table, plots, report.json) to
``--results`` with resnet18 as the FLOPs-to-target baseline (Hernandez & Brown 2020).
``--report-only`` redoes the page from the finished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from configs import study_cpu_imagenette as study_cfg
from train.report import LATENCY_FILE

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILE = REPO / "configs" / "study_cpu_imagenette.py"
LATENCY_BATCHES = (1, 64)


def _say(msg: str) -> None:
    print(f"[study] {msg}", flush=True)


def run_finished(run_dir: pathlib.Path) -> bool:
    """True when ``run_dir/summary.json`` exists (``python -m train`` writes it at the end)."""
    return (run_dir / "summary.json").is_file()


def measure_latency(model: str, *, image_size: int, num_classes: int,
                    batches: Sequence[int] = LATENCY_BATCHES, repeats: int = 10,
                    min_time_s: float = 0.5) -> dict[str, Any]:
    """Median forward latency (eval mode, jit, float32, random weights and data) per batch size.

    Returns ``{"latency_ms": {"1": ms, "64": ms}, "samples": ..., "load_1min": ...}``: each
    sample is the mean over enough calls to last ``min_time_s``; the median of ``repeats``.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from convfirst_jax import create_model
    from convfirst_jax.models.inference import jitted_logits

    fwd = jitted_logits(create_model(model, num_classes=num_classes, rngs=nnx.Rngs(0)))
    out: dict[str, Any] = {"model": model, "image_size": image_size, "latency_ms": {},
                           "samples_ms": {}, "load_1min": [], "backend": jax.default_backend(),
                           "device_kind": jax.devices()[0].device_kind,
                           "jax_version": jax.__version__}
    rng = np.random.default_rng(0)
    for b in batches:
        x = jnp.asarray(rng.standard_normal((b, image_size, image_size, 3), np.float32))
        jax.block_until_ready(fwd(x))
        t0 = time.perf_counter()
        jax.block_until_ready(fwd(x))
        one = time.perf_counter() - t0
        number = max(1, int(min_time_s / max(one, 1e-6)))
        samples = []
        out["load_1min"].append(os.getloadavg()[0])
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(number):
                y = fwd(x)
            jax.block_until_ready(y)
            samples.append(1e3 * (time.perf_counter() - t0) / number)
        out["latency_ms"][str(b)] = statistics.median(samples)
        out["samples_ms"][str(b)] = samples
    return out


def _read(path: pathlib.Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: the resumable sweep, then the results page."""
    import jax

    p = argparse.ArgumentParser(prog="python -m train.study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="ImageNet-layout folder (Imagenette)")
    p.add_argument("--out", default="runs/study-cpu-imagenette-64px", type=pathlib.Path,
                   help="run directories and sweep.json")
    p.add_argument("--results", default="docs/results/cpu-imagenette-64px", type=pathlib.Path,
                   help="where the results page goes")
    p.add_argument("--models", nargs="+", default=list(study_cfg.STUDY_MODELS))
    p.add_argument("--epochs", type=float, default=None,
                   help="epochs per model (default: the config's num_epochs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override for every run (same for all), e.g. --set "
                        "num_workers=1; repeatable")
    p.add_argument("--report-only", action="store_true",
                   help="skip training; rebuild the page from the finished runs")
    p.add_argument("--no-progress-bar", action="store_true")
    a = p.parse_args(argv)
    bad = [kv for kv in a.set if "=" not in kv or kv.startswith("-")]
    if bad:
        print(f"error: --set takes KEY=VALUE (a key of configs/default.py), got {bad[0]!r}",
              file=sys.stderr)
        return 2
    data_dir = pathlib.Path(a.data_dir)
    if not (data_dir / "train").is_dir() or not (data_dir / "val").is_dir():
        print(f"error: --data-dir {data_dir} needs train/ and val/ class folders "
              "(ImageNet layout), e.g. ../shared/data/imagenette", file=sys.stderr)
        return 2
    if a.epochs is not None and a.epochs <= 0:
        print(f"error: --epochs must be > 0, got {a.epochs}", file=sys.stderr)
        return 2
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    sweep_path = out / "sweep.json"
    sweep = _read(sweep_path) or {"runs": {}}
    cfg = study_cfg.get_config()
    epochs = a.epochs if a.epochs is not None else cfg.num_epochs
    overrides = [f"--config.data_dir={data_dir.resolve()}", f"--config.num_epochs={epochs}",
                 *(["--config.progress_bar=false"] if a.no_progress_bar else []),
                 *(f"--config.{kv}" for kv in a.set)]
    this = " ".join(["python -m train.study", *(argv if argv is not None else sys.argv[1:])])
    if a.report_only:  # the page says which command trained the runs
        sweep.setdefault("command", this)
        sweep["report_command"] = this
    else:
        sweep.update(command=this, config=str(CONFIG_FILE.relative_to(REPO)), epochs=epochs,
                     overrides=overrides, jax_version=jax.__version__,
                     device_kind=jax.devices()[0].device_kind, cpu_count=os.cpu_count())
    failed = []
    for i, model in enumerate(a.models if not a.report_only else []):
        run_dir = out / model
        rec = sweep["runs"].setdefault(model, {})
        if run_finished(run_dir):
            _say(f"{i + 1}/{len(a.models)} {model}: finished earlier, skipped")
        else:
            cmd = [sys.executable, "-m", "train", "--config", str(CONFIG_FILE),
                   "--workdir", str(run_dir), f"--config.model={model}", *overrides]
            _say(f"{i + 1}/{len(a.models)} {model}: {' '.join(cmd)}")
            rec.update(status="running", started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                   time.gmtime()))
            sweep_path.write_text(json.dumps(sweep, indent=2))
            t0 = time.perf_counter()
            rc = subprocess.call(cmd, cwd=REPO)
            rec["session_wall_s"] = rec.get("session_wall_s", 0.0) + time.perf_counter() - t0
            rec["rc"] = rc
            rec["status"] = "finished" if rc == 0 and run_finished(run_dir) else "failed"
            sweep_path.write_text(json.dumps(sweep, indent=2))
            _say(f"{model}: exit code {rc} after {time.perf_counter() - t0:.0f} s")
            if rec["status"] != "finished":
                failed.append(model)
                continue
        rec["status"] = "finished"
        if not (run_dir / LATENCY_FILE).is_file():
            summary = _read(run_dir / "summary.json")
            lat = measure_latency(model, image_size=int(summary.get("image_size", 64)),
                                  num_classes=int(summary.get("num_classes", 10)))
            (run_dir / LATENCY_FILE).write_text(json.dumps(lat, indent=2))
            _say(f"{model}: forward latency " + ", ".join(
                f"batch {b}: {ms:.1f} ms" for b, ms in lat["latency_ms"].items()))
        sweep_path.write_text(json.dumps(sweep, indent=2))

    from train import report  # noqa: PLC0415
    runs = [out / m for m in a.models if run_finished(out / m)]
    if runs:
        paths = report.write_report(runs, a.results, baseline=study_cfg.STUDY_BASELINE,
                                    targets=study_cfg.STUDY_TARGETS,
                                    command=sweep["command"],
                                    device=(f"CPU ({sweep['cpu_count']} cores)"
                                            if sweep.get("device_kind") == "cpu" else None))
        (a.results / "sweep.json").write_text(json.dumps(sweep, indent=2))
        _say(f"results page: {paths['markdown']}")
    else:
        _say("no finished run yet: no results page")
    if failed:
        print(f"[study] failed runs: {', '.join(failed)} (rerun the same command to resume)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
