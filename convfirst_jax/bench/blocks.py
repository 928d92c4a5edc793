"""One conv-first block, three implementations: XLA, the fused Pallas kernel, the jnp reference.

The block (Lavin 2024, Sec. 3; the ``pallas_kernels.conv_first_block`` contract)::

    out = x + layer_scale * (act(norm(dwconv_k(x) + conv_b) @ w1 + b1) @ w2 + b2)

* ``xla``: :func:`xla_block`, ``lax.conv_general_dilated`` + ``einsum`` jitted by XLA (on GPU
  the conv goes to cuDNN, the 1x1s to cuBLAS, elementwise ops are fused by XLA).
* ``pallas``: ``pallas_kernels.conv_first_block`` (one fused kernel; GPU only in this lab).
* ``reference``: ``pallas_kernels.conv_first_block_reference`` (plain jnp, also jitted).

Its unfused op sequence (for the waterline) is built with the complexity module's
``LayerRecorder``, so the per-op flop/byte conventions are the ones of the model tables.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from convfirst_jax.bench.layers import ACTIVATIONS

NORMS = ("layernorm", "affine")
IMPLS = ("xla", "pallas", "reference")


@dataclasses.dataclass(frozen=True)
class BlockCase:
    """One block configuration at one input size."""

    channels: int
    resolution: int
    kernel_size: int = 7
    expansion: int = 4
    group_width: int = 1
    norm: str = "layernorm"
    activation: str = "gelu"
    layer_scale: bool = True
    dtype: str = "float32"
    eps: float = 1e-6

    @property
    def label(self) -> str:
        gw = "dw" if self.group_width == 1 else f"gw{self.group_width}"
        return (f"C{self.channels} {self.resolution}x{self.resolution} k{self.kernel_size} "
                f"{gw} E{self.expansion} {self.norm} {self.activation}")

    def kernel_kwargs(self) -> dict[str, Any]:
        return dict(kernel_size=self.kernel_size, norm=self.norm, activation=self.activation,
                    group_width=self.group_width, eps=self.eps)


def make_block_params(rng: np.random.Generator, case: BlockCase, dtype: str | None = None
                      ) -> dict[str, jax.Array]:
    """Random block parameters in the kernel's ``params`` layout (variance-preserving scales)."""
    from convfirst_jax.bench.common import random_normal

    c, k, gw, e = case.channels, case.kernel_size, case.group_width, case.expansion
    dt = dtype or case.dtype

    def rnd(shape, scale, shift=0.0):
        return random_normal(rng, shape, dt, scale, shift)

    p = {
        "conv_w": rnd((k, k, gw, c), (k * k * gw) ** -0.5),
        "conv_b": rnd((c,), 0.1),
        "norm_scale": rnd((c,), 0.1, 1.0),
        "norm_shift": rnd((c,), 0.1),
        "w1": rnd((c, e * c), c ** -0.5),
        "b1": rnd((e * c,), 0.1),
        "w2": rnd((e * c, c), (e * c) ** -0.5),
        "b2": rnd((c,), 0.1),
    }
    if case.layer_scale:
        p["layer_scale"] = rnd((c,), 0.1, 0.5)
    return p


def xla_block(x: jax.Array, params: dict[str, jax.Array], *, kernel_size: int, norm: str,
              activation: str, group_width: int = 1, eps: float = 1e-6,
              branch_scale: jax.Array | None = None) -> jax.Array:
    """The conv-first block with XLA ops: lax conv + per-pixel norm + two einsums (+ residual).

    Matmuls and the conv run in ``x.dtype`` with float32 accumulation, their outputs are
    stored in ``x.dtype`` (as Flax layers with ``dtype=x.dtype`` do); norm statistics in f32.
    """
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
    dt = x.dtype
    c = x.shape[-1]
    pad = kernel_size // 2
    y = lax.conv_general_dilated(
        x, params["conv_w"].astype(dt), (1, 1), ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c // group_width,
        preferred_element_type=jnp.float32).astype(dt)
    y = y + params["conv_b"].astype(dt)
    scale = params["norm_scale"].astype(jnp.float32)
    shift = params["norm_shift"].astype(jnp.float32)
    yf = y.astype(jnp.float32)
    if norm == "layernorm":
        mu = yf.mean(-1, keepdims=True)
        var = jnp.square(yf - mu).mean(-1, keepdims=True)
        yf = (yf - mu) * lax.rsqrt(var + eps)
    y = (yf * scale + shift).astype(dt)
    h = jnp.einsum("nhwc,cd->nhwd", y, params["w1"].astype(dt),
                   preferred_element_type=jnp.float32).astype(dt) + params["b1"].astype(dt)
    h = ACTIVATIONS[activation](h)
    z = jnp.einsum("nhwd,dc->nhwc", h, params["w2"].astype(dt),
                   preferred_element_type=jnp.float32).astype(dt) + params["b2"].astype(dt)
    if params.get("layer_scale") is not None:
        z = z * params["layer_scale"].astype(dt)
    if branch_scale is not None:
        z = z * branch_scale.astype(dt)[:, None, None, None]
    return x + z


def block_impl_fn(impl: str, case: BlockCase) -> Callable[[jax.Array, dict], jax.Array]:
    """``f(x, params)`` for one implementation; imports the kernel package lazily.

    Raises ImportError (with the reason) when pallas_kernels does not provide the function.
    """
    kw = case.kernel_kwargs()
    if impl == "xla":
        return functools.partial(xla_block, **kw)
    if impl == "reference":
        from pallas_kernels import conv_first_block_reference

        return functools.partial(conv_first_block_reference, **kw)
    if impl == "pallas":
        from pallas_kernels import conv_first_block

        return functools.partial(conv_first_block, interpret=False, **kw)
    raise ValueError(f"unknown block impl {impl!r}; valid: {', '.join(IMPLS)}")


def block_layer_costs(case: BlockCase, batch_size: int) -> list[Any]:
    """Unfused op sequence of the block (one ``LayerCost`` per XLA-level op), in order.

    conv (+bias) -> norm -> fc1 (+bias) -> activation -> fc2 (+bias) -> [layer scale] -> add.
    The "affine" norm is costed as eval-mode BatchNorm (a per-channel affine).
    """
    from convfirst_jax.complexity.costs import LayerRecorder

    rec = LayerRecorder(batch_size, jnp.dtype(case.dtype).itemsize)
    c, r, k = case.channels, case.resolution, case.kernel_size
    blk = "block"
    shape = (r, r, c)
    shape = rec.conv(f"{blk}.conv_dw", blk, shape, c, kernel_size=k, padding=k // 2,
                     groups=c // case.group_width, bias=True)
    shape = rec.norm(f"{blk}.norm", blk, shape,
                     "layernorm" if case.norm == "layernorm" else "batchnorm")
    shape = rec.dense(f"{blk}.fc1", blk, shape, case.expansion * c, bias=True)
    shape = rec.activation(f"{blk}.act", blk, shape, case.activation)
    shape = rec.dense(f"{blk}.fc2", blk, shape, c, bias=True)
    if case.layer_scale:
        shape = rec.scale(f"{blk}.gamma", blk, shape)
    rec.add(f"{blk}.add", blk, shape)
    return rec.layers
