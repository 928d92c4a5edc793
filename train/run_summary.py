"""``workdir/summary.json``: the accuracy-complexity record of a finished run.

What the run is (:class:`RunFacts`, fixed at start) plus where it ended (a
:class:`~train.progress.RunProgress`): model, data, devices, analytic complexity, FLOPs
(XLA and 3 x analytic forward), speed, the eval history, and the training FLOPs until each
top-1 target was first reached (Hernandez & Brown 2020).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from train.progress import Cadence, RunProgress


def analytic_complexity(model: str, image_size: int, num_classes: int) -> dict[str, Any]:
    """Analytic MACs / FLOPs / params of one image (convfirst_jax.complexity), or Nones."""
    try:
        from convfirst_jax.complexity import model_complexity  # noqa: PLC0415
        table = model_complexity(model, resolution=image_size, batch_size=1,
                                 num_classes=num_classes)
        return {"macs_per_image": int(table.macs), "forward_flops_per_image": int(table.flops),
                "complexity_params": int(table.params)}
    except Exception as e:  # noqa: BLE001  (keep training without the analytic table)
        print(f"[train] warning: analytic complexity unavailable ({type(e).__name__}: {e})",
              flush=True)
        return {"macs_per_image": None, "forward_flops_per_image": None,
                "complexity_params": None}


@dataclasses.dataclass(frozen=True)
class RunFacts:
    """What a run is, known before its first step."""

    data_dir: str
    class_names: Sequence[str]
    num_classes: int
    devices: Sequence[jax.Device]
    params: int                  # trainable parameters
    complexity: dict[str, Any]   # analytic_complexity()
    cadence: Cadence
    peak_lr: float


def build_summary(config: ml_collections.ConfigDict, facts: RunFacts, progress: RunProgress
                  ) -> dict[str, Any]:
    """The summary.json record (keys as read by train.report and convfirst_jax.weights)."""
    evals = [h for h in progress.history if h.get("split") == "eval"]
    final = evals[-1] if evals else {}
    counter, cadence = progress.flops, facts.cadence
    return {
        "model": config.model,
        "status": "completed",
        "data_dir": facts.data_dir,
        "num_classes": facts.num_classes,
        "num_class_folders": len(facts.class_names),
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "eval_batch_size": config.eval_batch_size,
        "dtype": config.dtype,
        "block_impl": config.block_impl,
        "devices": len(facts.devices),
        "device_kind": facts.devices[0].device_kind,
        "backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dataset": pathlib.Path(config.data_dir).name if config.data_dir else "synthetic",
        "params": facts.params,
        **facts.complexity,
        "steps": cadence.total_steps,
        "steps_per_epoch": cadence.steps_per_epoch,
        "epochs": cadence.epoch(cadence.total_steps),
        "peak_learning_rate": facts.peak_lr,
        "wall_time_s": progress.wall_time(),
        "train_step_flops_xla": counter.step_flops,
        "train_flops_xla": counter.xla_flops,
        "train_flops_analytic": counter.analytic_flops,
        "train_flops_ratio_xla_over_analytic": counter.ratio,
        "train_images_per_s": progress.train_images_per_s,
        "loader_images_per_s": progress.speed.get("loader_images_per_s"),
        "step_images_per_s": progress.speed.get("step_images_per_s"),
        "eval_latency_ms_per_batch": progress.eval_latency_ms_per_batch,
        "invalid_train_images": progress.invalid_train_images,
        "final": {"top1": final.get("top1"), "top5": final.get("top5"),
                  "loss": final.get("loss"), "train_loss": progress.last_train.get("loss")},
        "best_top1": max((h["top1"] for h in evals), default=None),
        "history": [{k: h.get(k) for k in ("step", "epoch", "top1", "top5", "loss",
                                            "wall_time_s", "train_flops")} for h in evals],
        "targets": progress.targets.to_json(),
        "config": json.loads(config.to_json_best_effort()),
    }
