"""Standalone jitted ops rebuilt from a complexity ``LayerCost``, for the waterline chart.

Lavin 2024, waterline analysis: every layer of the unfused network is one kernel whose floor
is max(ops / peak, bytes / bandwidth). To compare each layer with its floor we time it on its
own: the op ``LayerCost.op`` describes ("conv", "dense", "layernorm", "batchnorm", an
activation name, "max", "mean", "add", "mul") on random inputs of the layer's shapes.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


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


def layer_op(layer: Any, batch_size: int, dtype: str
             ) -> tuple[Callable[..., jax.Array], Callable[[jax.Array], tuple]]:
    """(fn, make_args) that run ``layer`` standalone for ``batch_size`` images.

    ``make_args(key)`` draws a fresh random input set (activations and weights), so several
    sets can be rotated. Raises ValueError for an op it does not know.
    """
    h, w, c = layer.in_shape
    co = layer.out_shape[2]
    k, s, p, g = layer.kernel_size, layer.stride, getattr(layer, "padding", 0), layer.groups
    op = getattr(layer, "op", "") or _infer_op(layer)
    x_shape = (batch_size, h, w, c)

    def rnd(key, shape, scale=1.0):
        return (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    if op == "conv":
        bias = getattr(layer, "bias", False)

        def make(key):
            kx, kw, kb = jax.random.split(key, 3)
            args = (rnd(kx, x_shape), rnd(kw, (k, k, c // g, co), (k * k * c / g) ** -0.5))
            return args + ((rnd(kb, (co,)),) if bias else ())

        return (lambda x, w, *b: _conv(x, w, *b, stride=s, padding=p, groups=g)), make
    if op == "dense":
        bias = getattr(layer, "bias", False)

        def make(key):
            kx, kw, kb = jax.random.split(key, 3)
            args = (rnd(kx, x_shape), rnd(kw, (c, co), c ** -0.5))
            return args + ((rnd(kb, (co,)),) if bias else ())

        return _dense, make
    if op == "layernorm":
        def make(key):
            kx, kg, kb = jax.random.split(key, 3)
            return rnd(kx, x_shape), rnd(kg, (c,)), rnd(kb, (c,))

        return _layernorm, make
    if op == "batchnorm":
        def make(key):
            kx, km, kv, kg, kb = jax.random.split(key, 5)
            var = jnp.abs(rnd(kv, (c,))).astype(jnp.float32) + 0.5
            return (rnd(kx, x_shape), rnd(km, (c,)).astype(jnp.float32), var,
                    rnd(kg, (c,)).astype(jnp.float32), rnd(kb, (c,)).astype(jnp.float32))

        return _batchnorm, make
    if op in ACTIVATIONS:
        return ACTIVATIONS[op], lambda key: (rnd(key, x_shape),)
    if op == "max":
        return (lambda x: _max_pool(x, k=k, stride=s, padding=p)), lambda key: (rnd(key, x_shape),)
    if op == "mean":
        return (lambda x: x.mean(axis=(1, 2), keepdims=True)), lambda key: (rnd(key, x_shape),)
    if op == "add":
        def make(key):
            ka, kb = jax.random.split(key)
            return rnd(ka, x_shape), rnd(kb, x_shape)

        return (lambda a, b: a + b), make
    if op == "mul":
        def make(key):
            kx, kg = jax.random.split(key)
            return rnd(kx, x_shape), rnd(kg, (c,))

        return (lambda x, g_: x * g_), make
    raise ValueError(f"layer {layer.name!r}: cannot rebuild op {op!r} (kind {layer.kind!r}) "
                     "standalone; known ops: conv, dense, layernorm, batchnorm, "
                     f"{', '.join(ACTIVATIONS)}, max, mean, add, mul")


def _infer_op(layer: Any) -> str:
    """Best guess of the op for LayerCost-like objects without an ``op`` field."""
    kind = layer.kind
    if kind in ("full_conv", "grouped", "depthwise"):
        return "conv"
    if kind in ("pointwise", "linear"):
        return "dense"
    if kind == "norm":
        return "layernorm"
    if kind == "activation":
        return "gelu"
    if kind == "pool":
        return "mean" if layer.out_shape[:2] == (1, 1) else "max"
    return {"add": "add", "scale": "mul"}.get(kind, kind)
