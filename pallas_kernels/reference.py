"""Plain-jnp conv-first block: the reference the fused kernel is tested against.

Also the function whose ``jax.vjp`` is the fused kernel's backward pass (XLA recompute).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from pallas_kernels.activations import REFERENCE_ACTIVATIONS
from pallas_kernels.options import validate_inputs


def conv_first_block_reference(
    x: jax.Array,
    params: Mapping[str, Any],
    *,
    kernel_size: int,
    norm: str,
    activation: str,
    group_width: int = 1,
    eps: float = 1e-6,
    branch_scale: jax.Array | None = None,
    intermediate_dtype: Any = None,
) -> jax.Array:
    """One conv-first block (Lavin 2024, "ConvFirst block"; Liu et al. 2022, ConvNeXt), unfused::

        y   = conv_kxk(x, groups=C/group_width, padding=k//2) + conv_b
        y   = norm(y)            # "affine": y*scale+shift ; "layernorm": per-pixel LN over C
        h   = act(y @ w1 + b1)
        z   = h @ w2 + b2
        out = x + branch_scale[n] * layer_scale * z

    Convolution and matmul operands are cast to ``x.dtype`` with float32 accumulation; norm,
    biases, activation and the residual add are float32; the result has ``x.dtype``: the
    kernel's numerics, one rounding at the end. ``intermediate_dtype`` (e.g. ``x.dtype``)
    instead rounds the output of every layer (conv, norm, each 1x1, activation, scales) to
    that dtype, as a stack of Flax layers with ``dtype=x.dtype`` does; the XLA lab path and
    the folded network use this, so unfused XLA stores its intermediates in that dtype.
    Same arguments as :func:`pallas_kernels.conv_first_block` (minus ``interpret`` and
    ``batch_axis``); any odd kernel size / group width / channel count is accepted here.
    """
    params = validate_inputs(x, params, kernel_size=kernel_size, norm=norm,
                             activation=activation, group_width=group_width, eps=eps,
                             branch_scale=branch_scale, kernel_only=False)
    dtype = x.dtype
    f32 = jnp.float32
    if intermediate_dtype is None:
        def rounded(v):
            return v
    else:
        inter = jnp.dtype(intermediate_dtype)

        def rounded(v):
            return v.astype(inter).astype(f32)
    c = x.shape[-1]
    pad = kernel_size // 2
    y = lax.conv_general_dilated(
        x, params["conv_w"].astype(dtype), window_strides=(1, 1),
        padding=((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c // group_width, preferred_element_type=f32)
    y = rounded(y + params["conv_b"].astype(f32))
    if norm == "layernorm":
        mean = jnp.mean(y, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(y - mean), axis=-1, keepdims=True)
        y = (y - mean) * lax.rsqrt(var + eps)
    y = y * params["norm_scale"].astype(f32) + params["norm_shift"].astype(f32)
    h = jnp.dot(y.astype(dtype), params["w1"].astype(dtype), preferred_element_type=f32)
    h = rounded(REFERENCE_ACTIVATIONS[activation](rounded(h + params["b1"].astype(f32))))
    z = jnp.dot(h.astype(dtype), params["w2"].astype(dtype), preferred_element_type=f32)
    z = rounded(z + params["b2"].astype(f32))
    if params["layer_scale"] is not None:
        z = rounded(z * params["layer_scale"].astype(f32))
    if branch_scale is not None:
        z = rounded(z * branch_scale.astype(f32)[:, None, None, None])
    return (x.astype(f32) + z).astype(dtype)
