"""What a training config may hold, and how a resumed run's config may differ from the stored one.

:func:`validate_config` checks every value before any work starts (one ValueError naming the
key and the fix). :func:`check_resume` compares this run's config with the ``config.json`` /
``classes.json`` of the workdir it resumes: another model is refused, other settings are
refused unless ``allow_config_change`` (then recorded in :data:`CONFIG_CHANGES_FILE`).
"""

from __future__ import annotations

import datetime
import json
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections

from convfirst_jax.models.blocks import BLOCK_IMPLS
from convfirst_jax.specs import MODEL_SPECS, list_models
from train import flops as flops_lib
from train.errors import WorkdirMismatchError
from train.runtime import append_line, write_text

#: Compute dtypes training accepts (names of convfirst_jax.dtypes.COMPUTE_DTYPES): float16 is
#: left out because its narrow exponent needs loss scaling, which this loop does not do.
TRAIN_DTYPES = ("float32", "bfloat16")

#: Config keys that may differ between a run and its resumption without
#: ``allow_config_change``: they change what is printed or kept, not what is trained.
RESUME_FREE_KEYS = ("progress_bar", "log_every_steps", "checkpoint_every_steps",
                    "keep_checkpoints", "speed_check_batches", "speed_check_steps",
                    "allow_config_change")
CONFIG_CHANGES_FILE = "config_changes.jsonl"


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raise one ValueError naming the first bad config value and how to fix it."""
    c = config
    if c.model not in MODEL_SPECS:
        raise ValueError(f"config.model={c.model!r} is not a registered model; use one of "
                         f"{', '.join(list_models())}")
    if c.dtype not in TRAIN_DTYPES:
        raise ValueError(f"config.dtype={c.dtype!r} is not supported; use one of "
                         f"{list(TRAIN_DTYPES)}")
    if c.block_impl not in BLOCK_IMPLS:
        raise ValueError(f"config.block_impl={c.block_impl!r}; use one of {list(BLOCK_IMPLS)}")
    for key, value in c.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"config.{key} must be a finite number, got {value}")
    for key in ("batch_size", "eval_batch_size", "image_size", "log_every_steps",
                "checkpoint_every_steps", "keep_checkpoints"):
        if int(c[key]) < 1:
            raise ValueError(f"config.{key} must be >= 1, got {c[key]}")
    for key in ("batch_size", "eval_batch_size"):
        if c[key] % num_devices:
            raise ValueError(
                f"config.{key}={c[key]} does not divide by the {num_devices} devices of the "
                f"mesh; use a multiple of {num_devices}")
    if c.max_steps < 0 or c.num_epochs < 0 or (c.max_steps == 0 and c.num_epochs <= 0):
        raise ValueError("set config.num_epochs > 0 or config.max_steps > 0 "
                         f"(got num_epochs={c.num_epochs}, max_steps={c.max_steps})")
    if c.divergence_loss < 0:
        raise ValueError(f"config.divergence_loss must be >= 0 (0 = auto), got "
                         f"{c.divergence_loss}")
    if not 0.0 <= c.ema_decay < 1.0:
        raise ValueError(f"config.ema_decay must be in [0, 1) (0 = off), got {c.ema_decay}")
    if not 0.0 < c.crop_min_scale <= 1.0:
        raise ValueError(f"config.crop_min_scale must be in (0, 1], got {c.crop_min_scale}")
    if not 0.0 <= c.label_smoothing < 1.0:
        raise ValueError(f"config.label_smoothing must be in [0, 1), got {c.label_smoothing}")
    if c.learning_rate <= 0:
        raise ValueError(f"config.learning_rate must be > 0, got {c.learning_rate}")
    if c.eval_every_epochs < 1 and c.eval_every_steps < 1:
        raise ValueError("set config.eval_every_epochs >= 1 or config.eval_every_steps >= 1")
    flops_lib.TargetTracker(c.accuracy_targets)  # validates the targets


def _read_json(path: pathlib.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def config_changes(workdir: pathlib.Path, config: ml_collections.ConfigDict,
                   class_names: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """Settings this run changes against the run stored in ``workdir`` (config.json and
    classes.json): {key: (stored, now)}. Keys in :data:`RESUME_FREE_KEYS` and keys the stored
    config lacks (added by a later version) are not compared."""
    stored = _read_json(workdir / "config.json")
    now = json.loads(config.to_json_best_effort())
    changed: dict[str, tuple[Any, Any]] = {}
    if isinstance(stored, dict):
        for key in sorted(now):
            if key in RESUME_FREE_KEYS or key not in stored:
                continue
            if stored[key] != now[key]:
                changed[key] = (stored[key], now[key])
    stored_classes = _read_json(workdir / "classes.json")
    if isinstance(stored_classes, list) and stored_classes != list(class_names):
        changed["classes (classes.json)"] = (f"{len(stored_classes)} classes",
                                             f"{len(class_names)} classes" if
                                             len(class_names) != len(stored_classes)
                                             else "other class names")
    return changed


def check_resume(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                 latest: int | None, class_names: Sequence[str], say: Callable[[str], None],
                 primary: bool) -> Callable[[], None]:
    """Refuse to resume (from checkpoint step ``latest``) a run of another model or, unless
    allowed, of other settings.

    Returns ``commit()``, to call once the checkpoint has been restored: it records allowed
    changes in config_changes.jsonl and writes config.json and classes.json of this run (a
    resumption that fails leaves the stored settings as they were)."""
    record = None
    if latest is not None:
        changed = config_changes(workdir, config, class_names)
        if "model" in changed:
            raise WorkdirMismatchError(
                f"--workdir {str(workdir)!r} holds a {changed['model'][0]} run (checkpoint step "
                f"{latest}); this command asks for model {changed['model'][1]}: use a new "
                f"--workdir for another model, or delete {str(workdir)!r} to start over")
        if changed:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            if not config.allow_config_change:
                raise WorkdirMismatchError(
                    f"--workdir {str(workdir)!r} holds a run (checkpoint step {latest}) started "
                    f"with other settings: {listed}. Rerun with the stored settings to resume, "
                    "pass --config.allow_config_change=True to resume with the new ones (the "
                    "change is recorded), or use a new --workdir")
            say(f"resuming with changed settings (allowed by allow_config_change): {listed}; "
                f"recorded in {workdir / CONFIG_CHANGES_FILE}")
            record = {"step": latest, "time": datetime.datetime.now(
                datetime.timezone.utc).isoformat(timespec="seconds"),
                "changed": {k: {"stored": a, "now": b} for k, (a, b) in changed.items()}}

    def commit() -> None:
        if not primary:
            return
        if record is not None:
            append_line(workdir / CONFIG_CHANGES_FILE, json.dumps(record))
        write_text(workdir / "classes.json", json.dumps(list(class_names), indent=1))
        write_text(workdir / "config.json", config.to_json_best_effort(indent=2))

    return commit
