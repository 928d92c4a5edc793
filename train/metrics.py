"""Losses, masked metrics and the metrics.jsonl log of a training run.

Every per-example quantity is weighted by ``batch["valid"]`` (0 for an unreadable file or for
the padding of the last eval batch), so a corrupt image never moves the loss or the accuracy.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from train.errors import WriteFailedError, failure_reason


def smoothed_cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float
                           ) -> jax.Array:
    """Per-example softmax cross-entropy against label-smoothed one-hot targets.

    Label smoothing (Szegedy et al. 2016, Sec. 7): target = (1 - a) * onehot + a / K.
    """
    num_classes = logits.shape[-1]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    target = onehot * (1.0 - label_smoothing) + label_smoothing / num_classes
    return -jnp.sum(target * logp, axis=-1)


def masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """sum(values * weights) / max(sum(weights), 1): the mean over valid examples."""
    weights = weights.astype(jnp.float32)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """1.0 where the label is among the ``k`` highest logits (ties count as correct), else 0.0."""
    k = min(k, logits.shape[-1])
    label_logit = jnp.take_along_axis(logits, labels[:, None].astype(jnp.int32), axis=-1)
    rank = jnp.sum(logits > label_logit, axis=-1)  # number of classes strictly above the label
    return (rank < k).astype(jnp.float32)


def eval_sums(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """Sums over one eval batch: loss (no smoothing), top-1 / top-5 hits, valid count."""
    valid = valid.astype(jnp.float32)
    loss = smoothed_cross_entropy(logits, labels, 0.0)
    return {
        "loss_sum": jnp.sum(loss * valid),
        "top1_sum": jnp.sum(topk_correct(logits, labels, 1) * valid),
        "top5_sum": jnp.sum(topk_correct(logits, labels, 5) * valid),
        "count": jnp.sum(valid),
        "invalid": jnp.sum(1.0 - valid),
    }


class EvalAccumulator:
    """Host-side sum of :func:`eval_sums` over the eval set; :meth:`result` gives the means."""

    def __init__(self):
        self._sums: dict[str, float] = {}
        self.batches = 0

    def add(self, sums: Mapping[str, Any]) -> None:
        for k, v in jax.device_get(dict(sums)).items():
            self._sums[k] = self._sums.get(k, 0.0) + float(np.asarray(v))
        self.batches += 1

    def result(self) -> dict[str, float]:
        n = self._sums.get("count", 0.0)
        if n <= 0:
            return {"loss": math.nan, "top1": math.nan, "top5": math.nan, "count": 0}
        return {"loss": self._sums["loss_sum"] / n, "top1": self._sums["top1_sum"] / n,
                "top5": self._sums["top5_sum"] / n, "count": int(n)}


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.generic, np.ndarray)) or hasattr(x, "__array__"):
        x = np.asarray(x)
        return x.item() if x.ndim == 0 else x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def dumps(record: Mapping[str, Any]) -> str:
    """One-line JSON of a metrics record (numpy / jax scalars become Python numbers)."""
    return json.dumps(dict(record), default=_jsonable, allow_nan=True)


class MetricsWriter:
    """Appends one JSON object per line to ``workdir/metrics.jsonl``.

    On resume, :meth:`truncate_after` drops the lines a killed run wrote after its last
    checkpoint, and a run that starts from step 0 calls :meth:`reset`, so the file of a resumed
    run equals that of an uninterrupted one: one record per (split, step).
    """

    def __init__(self, path: str | pathlib.Path, enabled: bool = True):
        self.path = pathlib.Path(path)
        self.enabled = enabled

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record; an OSError (disk full, ...) becomes one WriteFailedError."""
        if not self.enabled:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(dumps(record) + "\n")
                f.flush()
        except OSError as e:
            raise WriteFailedError(f"could not append to {self.path}: {failure_reason(e)}; free "
                                   "disk space or fix the folder, then rerun the same command to "
                                   "resume") from None

    def reset(self) -> None:
        """Start the file afresh (a run starting from step 0: records of an earlier attempt
        that was killed before its first checkpoint are dropped)."""
        if self.enabled and self.path.exists():
            self.truncate_after(-1)

    def truncate_after(self, step: int) -> None:
        """Keep only the records with ``record["step"] <= step``."""
        if not self.enabled or not self.path.exists():
            return
        kept = [ln for ln in read_jsonl(self.path) if int(ln.get("step", 0)) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for rec in kept:
                f.write(dumps(rec) + "\n")
        tmp.replace(self.path)


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file (a torn last line from a kill is skipped)."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
