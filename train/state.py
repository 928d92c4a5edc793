"""Train state, optimizer and the pure (jit-able) train / eval steps.

The NNX model is split once into a static graph definition and three pytrees of variables
(``nnx.split(model, nnx.Param, nnx.BatchStat, ...)``): trainable parameters, BatchNorm running
statistics, and everything else (RNG keys/counters for drop path). The steps merge them back
inside ``jax.jit``; this keeps the state a plain pytree that orbax checkpoints and that the
device mesh replicates (flax examples/imagenet uses the same functional pattern).

Optimisation recipe (ConvNeXt, Liu et al. 2022, Sec. 2.1 / Appendix A.1): AdamW with decoupled
weight decay masked off norms and biases (parameters with ndim <= 1), linear warm-up then
cosine decay, label smoothing, global-norm gradient clipping, optional EMA of the weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from train import metrics as metrics_lib

Schedule = Callable[[jax.Array], jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (a pytree; checkpointed as a whole).

    ``ema_params`` / ``ema_batch_stats`` are None when the EMA is off.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    rest: Any
    opt_state: Any
    ema_params: Any = None
    ema_batch_stats: Any = None


@dataclasses.dataclass(frozen=True)
class ModelDefs:
    """Static graph definitions of the model in training and in evaluation mode."""

    train: Any
    eval: Any


def lr_schedule(peak: float, total_steps: int, warmup_steps: int) -> Schedule:
    """Linear warm-up to ``peak`` over ``warmup_steps`` updates, then cosine decay to 0.

    lr(s) = peak * (s + 1) / W for s < W, else peak * (1 + cos(pi * (s - W) / (T - W))) / 2
    (Loshchilov & Hutter 2017, SGDR without restarts). The first update already has a
    non-zero rate.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], "
                         f"got {warmup_steps}; lower warmup_epochs")
    decay = max(total_steps - warmup_steps, 1)

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        warm = peak * (s + 1.0) / max(warmup_steps, 1)
        frac = jnp.clip((s - warmup_steps) / decay, 0.0, 1.0)
        cos = 0.5 * peak * (1.0 + jnp.cos(math.pi * frac))
        return jnp.where(s < warmup_steps, warm, cos)

    return schedule


def weight_decay_mask(params: Any) -> Any:
    """True for parameters that get weight decay: conv / linear kernels (ndim > 1)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(schedule: Schedule, *, weight_decay: float, grad_clip_norm: float,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                   ) -> optax.GradientTransformation:
    """AdamW (Loshchilov & Hutter 2019) with masked decay, after optional global-norm clipping."""
    parts = []
    if grad_clip_norm and grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(grad_clip_norm))
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                             mask=weight_decay_mask))
    return optax.chain(*parts)


def _split(model: nnx.Module):
    return nnx.split(model, nnx.Param, nnx.BatchStat, ...)


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation,
                       use_ema: bool) -> tuple[ModelDefs, TrainState]:
    """Split ``model`` into static graph definitions and an initial :class:`TrainState`."""
    model.eval()
    eval_def, *_ = _split(model)
    model.train()
    train_def, params, batch_stats, rest = _split(model)
    copy = lambda t: jax.tree.map(jnp.array, t)  # noqa: E731  (EMA starts at the init weights)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, rest=rest,
        opt_state=tx.init(params),
        ema_params=copy(params) if use_ema else None,
        ema_batch_stats=copy(batch_stats) if use_ema else None)
    return ModelDefs(train=train_def, eval=eval_def), state


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
    """EMA decay with the usual warm-up min(decay, (1 + t) / (10 + t)) (TF ExponentialMovingAverage
    ``num_updates``), so short runs are not dominated by the random init."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def train_step(state: TrainState, batch: Mapping[str, jax.Array], *, graphdef: Any,
               tx: optax.GradientTransformation, schedule: Schedule, label_smoothing: float,
               ema_decay: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
    """One AdamW update on a (globally sharded) batch; the loss is masked by ``batch["valid"]``.

    Returns the new state and scalar metrics: loss, top1 (train, masked), grad_norm, lr,
    valid (number of readable images in the batch), state_finite (1.0 when every floating
    number of the *updated* state -- params, BatchNorm statistics, optimizer moments, EMA -- is
    finite). The loss is that of the weights before the update, so a diverging update shows up
    in state_finite one step before it reaches the loss; the loop checks both before it saves.
    """
    valid = batch["valid"].astype(jnp.float32)

    def loss_fn(params):
        # Fresh Variable objects for the mutable collections, created in this (grad) trace:
        # NNX refuses to mutate variables that belong to an outer trace.
        batch_stats, rest = jax.tree.map(lambda x: x, (state.batch_stats, state.rest))
        model = nnx.merge(graphdef, params, batch_stats, rest)
        logits = model(batch["image"])
        per_example = metrics_lib.smoothed_cross_entropy(logits, batch["label"], label_smoothing)
        loss = metrics_lib.masked_mean(per_example, valid)
        _, _, new_bs, new_rest = _split(model)
        return loss, (logits, new_bs, new_rest)

    (loss, (logits, new_bs, new_rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    ema_params, ema_bs = state.ema_params, state.ema_batch_stats
    if ema_decay > 0:
        d = ema_decay_at(ema_decay, state.step)
        mix = lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype)  # noqa: E731
        ema_params = jax.tree.map(mix, ema_params, params)
        ema_bs = jax.tree.map(mix, ema_bs, new_bs)

    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                              rest=new_rest, opt_state=opt_state, ema_params=ema_params,
                              ema_batch_stats=ema_bs)
    step_metrics = {
        "loss": loss,
        "top1": metrics_lib.masked_mean(metrics_lib.topk_correct(logits, batch["label"], 1),
                                        valid),
        "grad_norm": _global_norm(grads),
        "lr": schedule(state.step),
        "valid": jnp.sum(valid),
        "state_finite": all_finite(new_state).astype(jnp.float32),
    }
    return new_state, step_metrics


def all_finite(tree: Any) -> jax.Array:
    """True when every element of every floating leaf of ``tree`` is finite (a bool scalar)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
             if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def _global_norm(tree: Any) -> jax.Array:
    """sqrt(sum of squares of all leaves), in float32."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def eval_step(params: Any, batch_stats: Any, rest: Any, batch: Mapping[str, jax.Array], *,
              graphdef: Any) -> dict[str, jax.Array]:
    """Forward pass in eval mode (running BN statistics) and masked eval sums of one batch."""
    model = nnx.merge(graphdef, params, batch_stats, rest)
    logits = model(batch["image"])
    return metrics_lib.eval_sums(logits, batch["label"], batch["valid"])


def eval_variables(state: TrainState) -> tuple[Any, Any, Any]:
    """(params, batch_stats, rest) used for evaluation: the EMA copies when the EMA is on."""
    if state.ema_params is not None:
        return state.ema_params, state.ema_batch_stats, state.rest
    return state.params, state.batch_stats, state.rest
