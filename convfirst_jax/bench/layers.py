"""Standalone jitted ops rebuilt from a complexity ``LayerCost``, for the waterline chart.

Lavin 2024, waterline analysis: every layer of the unfused network is one kernel whose floor
is max(ops / peak, bytes / bandwidth). To compare each layer with its floor we time it on its
own: the op ``LayerCost.op`` describes ("conv", "dense", "layernorm", "batchnorm", an
activation name, "max", "mean", "add", "mul") on random inputs of the layer's shapes.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from convfirst_jax.bench.common import random_normal
from convfirst_jax.complexity.costs import LayerCost
from pallas_kernels.activations import REFERENCE_ACTIVATIONS


def _conv(x, w, b=None, *, stride: int, padding: int, groups: int):
    y = lax.conv_general_dilated(
        x, w, (stride, stride), ((padding, padding), (padding, padding)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    return y if b is None else y + b


def _dense(x, w, b=None):
    y = jnp.einsum("nhwc,cd->nhwd", x, w)
    return y if b is None else y + b


def _layernorm(x, g, b, eps: float = 1e-6):
    xf = x.astype(jnp.float32)
    mu = xf.mean(-1, keepdims=True)
    var = ((xf - mu) ** 2).mean(-1, keepdims=True)
    return ((xf - mu) * lax.rsqrt(var + eps) * g + b).astype(x.dtype)


def _batchnorm(x, mean, var, g, b, eps: float = 1e-5):
    """Eval-mode BatchNorm: a per-channel affine of the running statistics."""
    scale = g * lax.rsqrt(var + eps)
    return (x * scale.astype(x.dtype) + (b - mean * scale).astype(x.dtype))


def _max_pool(x, *, k: int, stride: int, padding: int):
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    return lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), lax.max, (1, k, k, 1),
                             (1, stride, stride, 1), pad)


def layer_op(layer: LayerCost, batch_size: int, dtype: str
             ) -> tuple[Callable[..., jax.Array], Callable[[np.random.Generator], tuple]]:
    """(fn, make_args) that run ``layer`` standalone for ``batch_size`` images.

    ``make_args(rng)`` draws a fresh random input set (activations and weights) from a numpy
    Generator, so several sets can be rotated. Raises ValueError for an op it does not know.
    """
    h, w, c = layer.in_shape
    co = layer.out_shape[2]
    k, s, p, g = layer.kernel_size, layer.stride, layer.padding, layer.groups
    op = layer.op
    x_shape = (batch_size, h, w, c)

    def rnd(rng, shape, scale=1.0, shift=0.0, dt=dtype):
        return random_normal(rng, shape, dt, scale, shift)

    bias = layer.bias
    if op == "conv":
        def make(rng):
            args = (rnd(rng, x_shape), rnd(rng, (k, k, c // g, co), (k * k * c / g) ** -0.5))
            return args + ((rnd(rng, (co,)),) if bias else ())

        return (lambda x, w, *b: _conv(x, w, *b, stride=s, padding=p, groups=g)), make
    if op == "dense":
        def make(rng):
            args = (rnd(rng, x_shape), rnd(rng, (c, co), c ** -0.5))
            return args + ((rnd(rng, (co,)),) if bias else ())

        return _dense, make
    if op == "layernorm":
        return _layernorm, lambda rng: (rnd(rng, x_shape), rnd(rng, (c,)), rnd(rng, (c,)))
    if op == "batchnorm":
        def make(rng):
            f32 = "float32"
            return (rnd(rng, x_shape), rnd(rng, (c,), dt=f32), rnd(rng, (c,), 0.1, 1.0, f32),
                    rnd(rng, (c,), dt=f32), rnd(rng, (c,), dt=f32))

        return _batchnorm, make
    if op in REFERENCE_ACTIVATIONS:
        return REFERENCE_ACTIVATIONS[op], lambda rng: (rnd(rng, x_shape),)
    if op == "max":
        return (lambda x: _max_pool(x, k=k, stride=s, padding=p)), lambda rng: (rnd(rng, x_shape),)
    if op == "mean":
        return (lambda x: x.mean(axis=(1, 2), keepdims=True)), lambda rng: (rnd(rng, x_shape),)
    if op == "add":
        return (lambda a, b: a + b), lambda rng: (rnd(rng, x_shape), rnd(rng, x_shape))
    if op == "mul":
        return (lambda x, g_: x * g_), lambda rng: (rnd(rng, x_shape), rnd(rng, (c,)))
    raise ValueError(f"layer {layer.name!r}: cannot rebuild op {op!r} (kind {layer.kind!r}) "
                     "standalone; known ops: conv, dense, layernorm, batchnorm, "
                     f"{', '.join(REFERENCE_ACTIVATIONS)}, max, mean, add, mul")

