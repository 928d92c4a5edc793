"""Activation functions of the conv-first block, in reference and in kernel form.

The reference forms are jax.nn's. The kernel forms use only primitives the Pallas Triton
lowering supports (it has no ``erf``) and no division: each reciprocal is one ``reciprocal``
argument, which is :func:`reciprocal_mufu` (one ``MUFU.RCP``, PTX ``rcp.approx.ftz.f32``,
<= 1 ulp) in the Triton kernel and :func:`reciprocal_exact` (a correctly rounded f32
division) in the Pallas interpreter, which cannot run PTX. Everything else is the same code
on both, so the CPU interpret tests check the device's math up to that one ulp per
reciprocal. :func:`kernel_activation` picks the pair.

Static H100 model, bf16 batch 128 (``python -m convfirst_jax.bench static``): the MUFU.RCP
form replaced ``rsqrt(v)**2`` and a Newton step (MUFU.RSQ + 3 FMA-pipe ops) and the exp2
argument cap that step needed: SiLU 12.2 -> 8.2 instructions per hidden element of the MLP
loop, exact GELU 23.3 -> 17.2 (with the folded constants and no select, below); C64 56x56 k3
affine-SiLU 66 -> 55 µs, LN-GELU 112 -> 91 µs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental.pallas import triton as plgpu

# Abramowitz & Stegun (1964), formula 7.1.26: for u >= 0,
#   erfc(u) ~= t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * exp(-u^2),
#   t = 1 / (1 + p u),  |error| <= 1.5e-7.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)

_LOG2E = math.log2(math.e)

Reciprocal = Callable[[jax.Array], jax.Array]


def reciprocal_exact(v: jax.Array) -> jax.Array:
    """1 / v, correctly rounded: the interpreter's form of :func:`reciprocal_mufu`."""
    return 1.0 / v


def reciprocal_mufu(v: jax.Array) -> jax.Array:
    """1 / v of float32 ``v >= 1`` as one ``MUFU.RCP`` (inline PTX ``rcp.approx.ftz.f32``:
    <= 1 ulp; subnormal results, 1 / v < 2^-126, flush to 0; 1 / inf = 0).

    Only for a Triton-lowered kernel body (the interpreter cannot run PTX). Triton lowers
    an f32 division to PTX ``div.full.f32`` (MUFU.RCP plus range scaling; in the static model
    C64 k3 affine-SiLU stays at 66 µs with it and LN-GELU rises to 126 µs), and the kernel's
    reciprocals (of ``1 + exp(-x)`` and ``1 + p |x| / sqrt 2``, both >= 1) need neither that
    range nor the extra rounding step.
    """
    [r] = plgpu.elementwise_inline_asm(
        "rcp.approx.ftz.f32 $0, $1;", args=[v], constraints="=f,f", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(v.shape, v.dtype)])
    return r


def _sigmoid_kernel(x: jax.Array, reciprocal: Reciprocal) -> jax.Array:
    """1 / (1 + exp(-x)) as exp2 (one MUFU.EX2) and one reciprocal (x -> -inf: exp2 gives
    inf and the reciprocal 0, the sigmoid's limit)."""
    return reciprocal(1.0 + jnp.exp2(x * -_LOG2E))


# The A&S formula in the variable s = |x| sqrt(log2(e) / 2) = u sqrt(log2 e), so exp(-u^2) =
# exp2(-s^2) and p u = (p / sqrt(log2 e)) s; the 1/2 of Phi's tail is folded into the a_i.
_GELU_S = math.sqrt(_LOG2E / 2.0)
_GELU_P = _AS_P / math.sqrt(_LOG2E)
_GELU_HALF_A = tuple(0.5 * a for a in _AS_A)


def gelu_exact_kernel(x: jax.Array, reciprocal: Reciprocal = reciprocal_exact) -> jax.Array:
    """Exact (erf) GELU, x * Phi(x) (Hendrycks & Gimpel 2016), without lax.erf.

    With the tail ``T = erfc(|x| / sqrt 2) / 2`` (A&S 7.1.26, no cancellation for either
    sign), x Phi(x) = x (1 - T) for x >= 0 and x T for x < 0, i.e. ``max(x, 0) - |x| T``
    for both (no select). Absolute error of Phi <= 7.5e-8 (A&S) plus a few f32 ulp from
    exp2 / the reciprocal; 2 MUFU (EX2, RCP) and 12 FMA-pipe operations per element.
    """
    s = jnp.abs(x) * _GELU_S
    t = reciprocal(1.0 + _GELU_P * s)
    a1, a2, a3, a4, a5 = _GELU_HALF_A
    tail = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * jnp.exp2(-(s * s))
    return jnp.maximum(x, 0.0) - jnp.abs(x) * tail


def gelu_tanh(x: jax.Array, reciprocal: Reciprocal = reciprocal_exact) -> jax.Array:
    """tanh-approximated GELU (Hendrycks & Gimpel 2016), 0.5 x (1 + tanh(z)), written as the
    identical x * sigmoid(2 z) (exp2 + reciprocal instead of a libdevice tanh)."""
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))
    return x * _sigmoid_kernel(2.0 * inner, reciprocal)


def silu(x: jax.Array, reciprocal: Reciprocal = reciprocal_exact) -> jax.Array:
    """x * sigmoid(x) (Elfwing et al. 2018), with exp2 and one reciprocal."""
    return x * _sigmoid_kernel(x, reciprocal)


def relu(x: jax.Array, reciprocal: Reciprocal = reciprocal_exact) -> jax.Array:
    del reciprocal
    return jnp.maximum(x, 0.0)


#: The kernel forms, each ``f(x, reciprocal)``; a kernel body takes its function from
#: :func:`kernel_activation`.
KERNEL_ACTIVATIONS: dict[str, Callable[[jax.Array, Reciprocal], jax.Array]] = {
    "relu": relu,
    "silu": silu,
    "gelu": gelu_exact_kernel,
    "gelu_tanh": gelu_tanh,
}


def kernel_activation(name: str, *, triton: bool) -> Callable[[jax.Array], jax.Array]:
    """The kernel form of activation ``name`` for a body lowered by Triton (``triton=True``:
    :func:`reciprocal_mufu`) or run by the Pallas interpreter (:func:`reciprocal_exact`)."""
    return functools.partial(KERNEL_ACTIVATIONS[name],
                             reciprocal=reciprocal_mufu if triton else reciprocal_exact)


def gelu_exact(x: jax.Array) -> jax.Array:
    """GELU with the exact erf (PyTorch ``nn.GELU()``, the ConvNeXt default)."""
    return jax.nn.gelu(x, approximate=False)


def gelu_tanh_reference(x: jax.Array) -> jax.Array:
    """GELU, tanh approximation (PyTorch ``nn.GELU(approximate="tanh")``)."""
    return jax.nn.gelu(x, approximate=True)


#: The block's activations as jax.nn computes them: the Flax layers, the XLA lab paths and
#: the kernel's reference all use this one table.
REFERENCE_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu": gelu_exact,
    "gelu_tanh": gelu_tanh_reference,
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The reference activation named in a block config: relu, silu, gelu (exact erf),
    gelu_tanh; an unknown name raises one ValueError listing the valid ones."""
    try:
        return REFERENCE_ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; valid: "
                         f"{', '.join(REFERENCE_ACTIVATIONS)}") from None
