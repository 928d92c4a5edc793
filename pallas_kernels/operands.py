"""Zero-padded matmul / vector operands of the conv-first block kernels (fused and split)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from pallas_kernels.tuning import padded_channels

_F32 = jnp.float32


def f32_vector(v: Any, size: int) -> jax.Array:
    """(len,) -> float32 (size,), zero-padded."""
    v = jnp.asarray(v).astype(_F32)
    return jnp.pad(v, (0, size - v.shape[0]))


def round_up(a: int, b: int) -> int:
    """Smallest multiple of b >= a."""
    return -(-a // b) * b


def mlp_operands(x: jax.Array, params: Mapping[str, Any], branch_scale: jax.Array | None,
                 hidden_multiple: int, hidden_scale: float = 1.0) -> tuple[jax.Array, ...]:
    """``(w1, b1, w2, b2, layer_scale, branch_scale)``: w1 (Cp, Hp) / w2 (Hp, Cp) rounded to
    x.dtype, vectors f32, zero-padded to ``Cp`` channels and ``Hp`` = the hidden width
    rounded up to ``hidden_multiple``; missing layer / branch scales are ones. w2 is divided
    by ``hidden_scale`` after the rounding (a power of two: exact), the factor by which the
    kernel's activation exceeds the activation
    (:func:`pallas_kernels.activations.kernel_hidden_scale`)."""
    dtype = x.dtype
    c = x.shape[-1]
    cp = padded_channels(c)
    hidden = params["w1"].shape[1]
    hp = round_up(hidden, hidden_multiple)
    w1 = jnp.pad(jnp.asarray(params["w1"]).astype(dtype), ((0, cp - c), (0, hp - hidden)))
    w2 = jnp.pad(jnp.asarray(params["w2"]).astype(dtype), ((0, hp - hidden), (0, cp - c)))
    if hidden_scale != 1.0:
        w2 = w2 * jnp.asarray(1.0 / hidden_scale, dtype)
    ls = params.get("layer_scale")
    ls = jnp.ones((cp,), _F32) if ls is None else f32_vector(ls, cp)
    bs = (jnp.ones((x.shape[0],), _F32) if branch_scale is None
          else jnp.asarray(branch_scale).astype(_F32))
    return w1, f32_vector(params["b1"], hp), w2, f32_vector(params["b2"], cp), ls, bs
