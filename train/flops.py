"""Training-compute bookkeeping: cumulative FLOPs and FLOPs-to-target (Hernandez & Brown 2020).

Hernandez & Brown ("Measuring the Algorithmic Efficiency of Neural Networks", 2020, Sec. 2 and
Fig. 1) compare architectures by the training compute needed to *first* reach a fixed
accuracy, and report it as a ratio against a baseline (their "44x less compute than AlexNet").
This module is pure Python so it can be unit-tested on scripted metric sequences and
checkpointed as JSON:

* :class:`FlopsCounter` turns a per-step FLOP count (XLA cost analysis of the compiled train
  step) and an analytic forward FLOP count per image into cumulative training FLOPs, both ways,
  so the two estimates can be cross-checked (``ratio`` should be close to 1; the analytic one
  uses the usual backward = 2 x forward rule, i.e. 3 x forward FLOPs per training image).
* :class:`TargetTracker` records, for each top-1 target, the first evaluation at which it was
  reached: step, epoch, wall time and cumulative training FLOPs.
* :func:`flops_to_target_ratios` divides every run's FLOPs-to-target by the baseline's.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


@dataclasses.dataclass
class FlopsCounter:
    """Cumulative training FLOPs, measured (XLA) and analytic (3 x forward x images).

    Attributes:
      step_flops: FLOPs of one compiled train step over the *global* batch (XLA cost analysis of
        the per-device program times the number of devices).
      forward_flops_per_image: analytic forward FLOPs of one image (complexity table).
      steps: train steps counted so far.
      images: training images seen so far (global batch x steps, invalid files included).
    """

    step_flops: float = 0.0
    forward_flops_per_image: float = 0.0
    steps: int = 0
    images: int = 0

    def add_steps(self, steps: int, images: int) -> None:
        """Count ``steps`` train steps that together processed ``images`` images."""
        if steps < 0 or images < 0:
            raise ValueError(f"steps and images must be >= 0, got steps={steps}, images={images}")
        self.steps += int(steps)
        self.images += int(images)

    @property
    def xla_flops(self) -> float:
        """Cumulative training FLOPs from XLA's cost analysis: step FLOPs x steps."""
        return float(self.step_flops) * self.steps

    @property
    def analytic_flops(self) -> float:
        """Cumulative training FLOPs estimated as 3 x forward FLOPs x images."""
        return 3.0 * float(self.forward_flops_per_image) * self.images

    @property
    def train_flops(self) -> float:
        """The FLOPs used for FLOPs-to-target: XLA's count, the analytic one if XLA has none."""
        return self.xla_flops if self.step_flops > 0 else self.analytic_flops

    @property
    def ratio(self) -> float | None:
        """xla_flops / analytic_flops (None until both are known)."""
        if self.analytic_flops <= 0 or self.xla_flops <= 0:
            return None
        return self.xla_flops / self.analytic_flops

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "FlopsCounter":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclasses.dataclass(frozen=True)
class TargetRecord:
    """The first evaluation at which eval top-1 reached ``target``."""

    target: float
    step: int
    epoch: float
    wall_time_s: float
    train_flops: float
    top1: float


def _check_targets(targets: Iterable[float]) -> tuple[float, ...]:
    out = tuple(sorted({float(t) for t in targets}))
    bad = [t for t in out if not 0.0 < t <= 1.0]
    if bad:
        raise ValueError(
            f"accuracy targets must be fractions in (0, 1], got {bad}; write 0.7 for 70% top-1")
    return out


class TargetTracker:
    """Records the first step / wall time / training FLOPs at which each top-1 target is met.

    Targets are fractions (0.7 = 70% top-1). Feed every evaluation, in order, to :meth:`update`;
    a target is reached when ``top1 >= target`` for the first time (later dips do not undo it).
    """

    def __init__(self, targets: Iterable[float]):
        self.targets = _check_targets(targets)
        self.records: dict[float, TargetRecord | None] = {t: None for t in self.targets}

    def update(self, *, step: int, epoch: float, wall_time_s: float, train_flops: float,
               top1: float) -> list[TargetRecord]:
        """Register one evaluation; returns the targets it reached for the first time."""
        if not math.isfinite(top1):
            return []
        new = []
        for t in self.targets:
            if self.records[t] is None and top1 >= t:
                rec = TargetRecord(target=t, step=int(step), epoch=float(epoch),
                                   wall_time_s=float(wall_time_s),
                                   train_flops=float(train_flops), top1=float(top1))
                self.records[t] = rec
                new.append(rec)
        return new

    def to_json(self) -> dict[str, dict[str, Any] | None]:
        """JSON form: {"0.7": {"step": ..., ...} or None}."""
        return {_key(t): (dataclasses.asdict(r) if r is not None else None)
                for t, r in self.records.items()}

    @classmethod
    def from_json(cls, d: Mapping[str, Mapping[str, Any] | None],
                  targets: Iterable[float] | None = None) -> "TargetTracker":
        """Inverse of :meth:`to_json`; ``targets`` (default: the keys of ``d``) may add new ones."""
        tracker = cls(targets if targets is not None else [float(k) for k in d])
        for k, rec in d.items():
            t = float(k)
            if t in tracker.records and rec is not None:
                tracker.records[t] = TargetRecord(**rec)
        return tracker


def _key(t: float) -> str:
    return repr(float(t))


def flops_to_target_ratios(runs: Mapping[str, Mapping[str, Any]], baseline: str,
                           targets: Sequence[float] | None = None
                           ) -> dict[str, dict[float, float | None]]:
    """FLOPs-to-target of every run divided by the baseline run's (Hernandez & Brown, Fig. 1).

    Args:
      runs: run name -> summary dict with a ``"targets"`` entry in :meth:`TargetTracker.to_json`
        form.
      baseline: name of the baseline run (a key of ``runs``).
      targets: targets to compare (default: all targets of the baseline).

    Returns:
      run name -> {target: run FLOPs / baseline FLOPs}, None where either never reached it.
      A ratio below 1 means the run needed less training compute than the baseline.
    """
    if baseline not in runs:
        raise ValueError(f"baseline run {baseline!r} not found; runs: {', '.join(sorted(runs))}")
    base = {float(k): v for k, v in runs[baseline].get("targets", {}).items()}
    targets = sorted(base) if targets is None else [float(t) for t in targets]
    out: dict[str, dict[float, float | None]] = {}
    for name, summary in runs.items():
        recs = {float(k): v for k, v in summary.get("targets", {}).items()}
        row: dict[float, float | None] = {}
        for t in targets:
            b, r = base.get(t), recs.get(t)
            if b is None or r is None or not b.get("train_flops"):
                row[t] = None
            else:
                row[t] = float(r["train_flops"]) / float(b["train_flops"])
        out[name] = row
    return out
