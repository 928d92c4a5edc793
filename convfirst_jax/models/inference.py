"""An eval-mode model as a function of its state: the one forward that evaluation, prediction,
serving export and the latency lab all call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def inference_fn(model: nnx.Module) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
    """``(forward, state)`` with ``forward(state, images) -> float32 logits``, pure and unjitted.

    Puts ``model`` in eval mode (BatchNorm running statistics, no drop path). Passing the state
    as an argument keeps the weights out of the compiled program (one compile per input shape,
    whatever the weights); closing over it instead embeds them as constants (serving export).
    """
    model.eval()
    graphdef, state = nnx.split(model)

    def forward(state: Any, images: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(images).astype(jnp.float32)

    return forward, state


def jitted_logits(model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
    """``images -> float32 logits`` of the eval-mode model, jitted once (weights as arguments)."""
    forward, state = inference_fn(model)
    jitted = jax.jit(forward)
    return lambda images: jitted(state, images)
