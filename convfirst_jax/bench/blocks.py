"""One conv-first block, three implementations: XLA, the fused Pallas kernel, the jnp reference.

The block (Lavin 2024, Sec. 3; the ``pallas_kernels.conv_first_block`` contract)::

    out = x + layer_scale * (act(norm(dwconv_k(x) + conv_b) @ w1 + b1) @ w2 + b2)

* ``xla``: :func:`xla_block`, the jnp reference with every layer rounded to ``x.dtype`` (as the
  Flax layers store it), jitted by XLA (on GPU the conv goes to cuDNN, the 1x1s to cuBLAS,
  elementwise ops are fused by XLA).
* ``pallas``: ``pallas_kernels.conv_first_block`` (one fused kernel; GPU only in this lab).
* ``reference``: ``pallas_kernels.conv_first_block_reference`` (plain jnp, float32
  intermediates and one rounding at the end, the kernel's numerics; also jitted).

Its unfused op sequence (for the waterline) is built with the complexity module's
``LayerRecorder``, so the per-op flop/byte conventions are the ones of the model tables.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import numpy as np

from convfirst_jax.bench.common import random_normal
from convfirst_jax.complexity.costs import LayerCost, LayerRecorder
from convfirst_jax.dtypes import itemsize
from convfirst_jax.bench.options import LAB_BLOCK_IMPLS
from pallas_kernels import conv_first_block, conv_first_block_reference


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


def xla_block(x: jax.Array, params: dict[str, jax.Array], **options: Any) -> jax.Array:
    """The block as XLA runs it unfused: the kernel's jnp reference with every layer's output
    stored in ``x.dtype`` (``intermediate_dtype=x.dtype``), as Flax layers with
    ``dtype=x.dtype`` do; ``options`` are those of ``conv_first_block_reference``."""
    return conv_first_block_reference(x, params, intermediate_dtype=x.dtype, **options)


def block_impl_fn(impl: str, case: BlockCase) -> Callable[[jax.Array, dict], jax.Array]:
    """``f(x, params)`` for one implementation (:data:`LAB_BLOCK_IMPLS`)."""
    kw = case.kernel_kwargs()
    if impl == "xla":
        return functools.partial(xla_block, **kw)
    if impl == "reference":
        return functools.partial(conv_first_block_reference, **kw)
    if impl == "pallas":
        return functools.partial(conv_first_block, interpret=False, **kw)
    raise ValueError(f"unknown block impl {impl!r}; valid: {', '.join(LAB_BLOCK_IMPLS)}")


def block_layer_costs(case: BlockCase, batch_size: int) -> list[LayerCost]:
    """Unfused op sequence of the block (one ``LayerCost`` per XLA-level op), in order.

    conv (+bias) -> norm -> fc1 (+bias) -> activation -> fc2 (+bias) -> [layer scale] -> add.
    The "affine" norm is costed as eval-mode BatchNorm (a per-channel affine).
    """
    rec = LayerRecorder(batch_size, itemsize(case.dtype))
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
