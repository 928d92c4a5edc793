"""Where a run stands (:class:`RunProgress`, saved in every checkpoint) and when it is time to
log, evaluate, checkpoint or close an epoch (:class:`Cadence`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from train import flops as flops_lib


@dataclasses.dataclass(frozen=True)
class Due:
    """What is due after one step."""

    log: bool         # a train record (every log_every_steps, and at each eval)
    eval: bool        # an eval pass (every eval_every steps, and at the last step)
    checkpoint: bool  # a checkpoint (every checkpoint_every_steps, and at each eval)
    epoch_end: bool   # the epoch record (the last step of an epoch)

    def __bool__(self) -> bool:
        return self.log or self.eval or self.checkpoint or self.epoch_end


@dataclasses.dataclass(frozen=True)
class Cadence:
    """The run's length in steps and the step intervals of its periodic work."""

    total_steps: int
    steps_per_epoch: int
    eval_every: int
    checkpoint_every: int
    log_every: int

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, steps_per_epoch: int) -> Cadence:
        """``max_steps`` (> 0) or ``num_epochs`` epochs; ``eval_every_steps`` (> 0) or
        ``eval_every_epochs`` epochs between evals."""
        total = (int(config.max_steps) if config.max_steps > 0
                 else int(round(config.num_epochs * steps_per_epoch)))
        eval_every = (int(config.eval_every_steps) if config.eval_every_steps > 0
                      else int(config.eval_every_epochs) * steps_per_epoch)
        return cls(total_steps=total, steps_per_epoch=steps_per_epoch, eval_every=eval_every,
                   checkpoint_every=int(config.checkpoint_every_steps),
                   log_every=int(config.log_every_steps))

    def due(self, step: int) -> Due:
        """Is it time, after ``step`` steps, to log / evaluate / checkpoint / end an epoch?"""
        is_eval = step % self.eval_every == 0 or step == self.total_steps
        return Due(log=step % self.log_every == 0 or is_eval, eval=is_eval,
                   checkpoint=step % self.checkpoint_every == 0 or is_eval,
                   epoch_end=step % self.steps_per_epoch == 0)

    def epoch(self, step: int) -> float:
        return step / self.steps_per_epoch


@dataclasses.dataclass
class RunProgress:
    """Everything a run counts besides the train state. It is saved as the JSON ``meta`` of
    every checkpoint (:meth:`to_meta`, the keys of earlier versions) and restored from it
    (:meth:`from_meta`), so a resumed run goes on counting where the stopped one was."""

    flops: flops_lib.FlopsCounter
    targets: flops_lib.TargetTracker
    history: list[dict[str, Any]]          # every eval record
    wall_before_s: float = 0.0             # wall time of the earlier sessions of this run
    invalid_train_images: int = 0          # unreadable training images, whole run
    invalid_epoch: int = 0                 # ... in the current epoch
    eval_latency_ms_per_batch: float | None = None
    speed: dict[str, float] = dataclasses.field(default_factory=dict)  # start-up speed check
    last_train: dict[str, Any] = dataclasses.field(default_factory=dict)  # last train record
    loop_time_s: float = 0.0               # time in train steps (evals and saves excluded)
    loop_images: int = 0                   # images trained on in that time
    # This session only (not saved): when it started and the current logging interval.
    session_start: float = dataclasses.field(default_factory=time.perf_counter)
    interval_start: float = dataclasses.field(default_factory=time.perf_counter)
    interval_steps: int = 0

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], *, targets: Sequence[float],
                  session_start: float) -> RunProgress:
        """The progress stored in a checkpoint's meta ({} for a fresh run)."""
        return cls(
            flops=flops_lib.FlopsCounter.from_json(meta.get("flops", {})),
            targets=flops_lib.TargetTracker.from_json(meta.get("targets", {}), targets=targets),
            history=list(meta.get("history", [])),
            wall_before_s=float(meta.get("wall_time_s", 0.0)),
            invalid_train_images=int(meta.get("invalid_train_images", 0)),
            invalid_epoch=int(meta.get("invalid_epoch", 0)),
            eval_latency_ms_per_batch=meta.get("eval_latency_ms_per_batch"),
            speed=dict(meta.get("speed", {})),
            last_train=dict(meta.get("last_train") or {}),
            loop_time_s=float(meta.get("loop_time_s", 0.0)),
            loop_images=int(meta.get("loop_images", 0)),
            session_start=session_start)

    def to_meta(self, step: int, data_iterator: Any) -> dict[str, Any]:
        """The checkpoint meta of ``step`` (``data_iterator``: the encoded grain state)."""
        return {
            "step": step, "data_iterator": data_iterator, "flops": self.flops.to_json(),
            "targets": self.targets.to_json(), "history": self.history,
            "wall_time_s": self.wall_time(), "invalid_train_images": self.invalid_train_images,
            "invalid_epoch": self.invalid_epoch,
            "eval_latency_ms_per_batch": self.eval_latency_ms_per_batch, "speed": self.speed,
            "last_train": self.last_train, "loop_time_s": self.loop_time_s,
            "loop_images": self.loop_images,
        }

    def wall_time(self) -> float:
        """Seconds of the whole run: earlier sessions plus this one so far."""
        return self.wall_before_s + time.perf_counter() - self.session_start

    def count_step(self, batch_size: int) -> None:
        self.flops.add_steps(1, batch_size)
        self.interval_steps += 1

    def count_invalid(self, images: int) -> None:
        self.invalid_train_images += images
        self.invalid_epoch += images

    def start_interval(self) -> None:
        self.interval_start, self.interval_steps = time.perf_counter(), 0

    def end_interval(self, batch_size: int) -> float:
        """Add the steps since :meth:`start_interval` to the loop time; their images/s."""
        dt = time.perf_counter() - self.interval_start
        images = self.interval_steps * batch_size
        self.loop_time_s += dt
        self.loop_images += images
        return images / max(dt, 1e-9)

    @property
    def train_images_per_s(self) -> float | None:
        return self.loop_images / self.loop_time_s if self.loop_time_s > 0 else None
