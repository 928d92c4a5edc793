"""Static options of a conv-first block call and the checks behind its ValueErrors.

Shared by the fused kernel (:mod:`pallas_kernels.fused_block`) and the plain-jnp
reference (:mod:`pallas_kernels.reference`) so both accept exactly the same inputs; the kernel
additionally enforces the constraints of its Triton tiling (``kernel_only=True``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from pallas_kernels.activations import REFERENCE_ACTIVATIONS

#: The block's vocabulary, imported by the models, the lab and the training configs.
NORMS = ("affine", "layernorm")
ACTIVATIONS = tuple(REFERENCE_ACTIVATIONS)
KERNEL_SIZES = (3, 5, 7)
GROUP_WIDTHS = (1, 8)
KERNEL_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
REQUIRED_PARAMS = ("conv_w", "conv_b", "norm_scale", "norm_shift", "w1", "b1", "w2", "b2")
OPTIONAL_PARAMS = ("layer_scale",)

_XLA_HINT = 'block_impl="xla" works for any configuration'


@dataclasses.dataclass(frozen=True)
class BlockOptions:
    """Hashable static configuration of one block call (the non-array arguments).

    ``interpret``: True = Pallas interpreter, False = Triton lowering, None = chosen per
    lowering platform (see :func:`pallas_kernels.fused_block.fused_forward`).
    """

    kernel_size: int
    norm: str
    activation: str
    group_width: int = 1
    eps: float = 1e-6
    interpret: bool | None = True
    batch_axis: str = "data"


def _fail(msg: str, kernel_only: bool) -> None:
    if kernel_only:
        raise ValueError(f"conv_first_block: {msg} ({_XLA_HINT}).")
    raise ValueError(f"conv_first_block_reference: {msg}.")


def _shape(a: Any) -> tuple[int, ...]:
    return tuple(np.shape(a))


def _dtype(a: Any) -> np.dtype:
    dtype = getattr(a, "dtype", None)
    return jnp.dtype(dtype if dtype is not None else np.asarray(a).dtype)


def validate_inputs(x: Any, params: Mapping[str, Any], *, kernel_size: int, norm: str,
                    activation: str, group_width: int, eps: float, branch_scale: Any,
                    kernel_only: bool) -> dict[str, Any]:
    """Checks one call's inputs; returns ``params`` with ``layer_scale`` present (maybe None).

    Raises a single ValueError naming the violated constraint. With ``kernel_only`` the
    fused kernel's extra constraints (C multiple of 8, k in {3,5,7}, group width 1 or 8,
    float32/bfloat16/float16 activations) are enforced too.
    """
    if norm not in NORMS:
        _fail(f"unknown norm {norm!r}; valid: {', '.join(NORMS)} (fold BatchNorm into an "
              "'affine' scale/shift)", kernel_only)
    if activation not in ACTIVATIONS:
        _fail(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}", kernel_only)
    if not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1 or kernel_size % 2 == 0:
        _fail(f"kernel_size={kernel_size!r} must be an odd positive int", kernel_only)
    if kernel_only and kernel_size not in KERNEL_SIZES:
        _fail(f"kernel_size={kernel_size} is not supported by the fused kernel; supported: "
              f"{KERNEL_SIZES}", kernel_only)
    if not isinstance(group_width, (int, np.integer)) or group_width < 1:
        _fail(f"group_width={group_width!r} must be a positive int", kernel_only)
    if kernel_only and group_width not in GROUP_WIDTHS:
        _fail(f"group_width={group_width} is not supported by the fused kernel; supported: "
              f"{GROUP_WIDTHS} (depthwise or groups of 8 channels)", kernel_only)
    if not float(eps) > 0:
        _fail(f"eps={eps!r} must be > 0", kernel_only)

    if np.ndim(x) != 4:
        _fail(f"x must be NHWC with 4 dims, got shape {_shape(x)}", kernel_only)
    dtype = _dtype(x)
    if not jnp.issubdtype(dtype, jnp.floating):
        _fail(f"x has dtype {dtype}; it must be floating (cast images to float32 first)",
              kernel_only)
    if kernel_only and dtype not in KERNEL_DTYPES:
        _fail(f"x has dtype {dtype}; the fused kernel supports float32, bfloat16, float16",
              kernel_only)
    n, _, _, c = _shape(x)
    if kernel_only and c % 8:
        _fail(f"channels C={c} must be a multiple of 8 for the fused kernel", kernel_only)
    if c % group_width:
        _fail(f"channels C={c} must be divisible by group_width={group_width}", kernel_only)

    if not isinstance(params, Mapping):
        _fail(f"params must be a dict of arrays, got {type(params).__name__}", kernel_only)
    missing = [k for k in REQUIRED_PARAMS if k not in params]
    unknown = [k for k in params if k not in REQUIRED_PARAMS + OPTIONAL_PARAMS]
    if missing or unknown:
        _fail(f"params keys: missing {missing}, unknown {unknown}; expected "
              f"{list(REQUIRED_PARAMS)} plus optional {list(OPTIONAL_PARAMS)}", kernel_only)
    w1_shape = _shape(params["w1"])
    if len(w1_shape) != 2 or w1_shape[1] < 1:
        _fail(f"params['w1'] must have shape (C, hidden), got {w1_shape}", kernel_only)
    hidden = w1_shape[1]
    expected = {
        "conv_w": (kernel_size, kernel_size, group_width, c),
        "conv_b": (c,), "norm_scale": (c,), "norm_shift": (c,),
        "w1": (c, hidden), "b1": (hidden,), "w2": (hidden, c), "b2": (c,),
        "layer_scale": (c,),
    }
    out = dict(params)
    out.setdefault("layer_scale", None)
    for name, shape in expected.items():
        value = out[name]
        if value is None and name in OPTIONAL_PARAMS:
            continue
        if _shape(value) != shape:
            _fail(f"params[{name!r}] has shape {_shape(value)}, expected {shape} (HWIO conv "
                  f"weights; k={kernel_size}, group_width={group_width}, C={c}, "
                  f"hidden={hidden})", kernel_only)
        pdtype = _dtype(value)
        if not jnp.issubdtype(pdtype, jnp.floating):
            _fail(f"params[{name!r}] has dtype {pdtype}; it must be floating", kernel_only)
    if branch_scale is not None:
        if _shape(branch_scale) != (n,):
            _fail(f"branch_scale must have shape (N,)=({n},), got {_shape(branch_scale)}",
                  kernel_only)
        bdtype = _dtype(branch_scale)
        if not jnp.issubdtype(bdtype, jnp.floating):
            _fail(f"branch_scale has dtype {bdtype}; it must be floating", kernel_only)
    return out
