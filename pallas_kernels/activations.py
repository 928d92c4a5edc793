"""Activation functions of the conv-first block, in reference and in kernel form.

The reference forms are jax.nn's. The kernel forms use only primitives the Pallas Triton
lowering supports (it has no ``erf``), and they are the same code in interpret mode and on
the GPU, so the CPU interpret tests check exactly the math that runs on the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

# Abramowitz & Stegun (1964), formula 7.1.26: for u >= 0,
#   erfc(u) ~= t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * exp(-u^2),
#   t = 1 / (1 + p u),  |error| <= 1.5e-7.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


_LOG2E = math.log2(math.e)
# exp2 arguments are capped here so 1 + exp2(.) stays finite (2^126 + 1): the reciprocal's
# Newton step then never sees inf * 0; the capped sigmoid (2^-126) is 0 to f32 precision.
_EXP2_CAP = 126.0


def _reciprocal_ge1(v: jax.Array) -> jax.Array:
    """1 / v for finite v >= 1, without a division.

    ``rsqrt(v)**2`` (one MUFU.RSQ on the GPU, |rel. error| ~ 2^-22) refined by one Newton
    step ``r * (2 - v * r)`` (error squared: ~1 ulp). A correctly rounded f32 division
    lowers to ~10 instructions plus a slow path; this is 1 MUFU + 3 FMA-pipe ops.
    """
    r = lax.rsqrt(v)
    r = r * r
    return r * (2.0 - v * r)


def _sigmoid_kernel(x: jax.Array) -> jax.Array:
    """1 / (1 + exp(-x)) as exp2 (one MUFU.EX2) and :func:`_reciprocal_ge1`."""
    e = jnp.exp2(jnp.minimum(x * -_LOG2E, _EXP2_CAP))
    return _reciprocal_ge1(1.0 + e)


def _erfc_nonneg_times_exp(u: jax.Array, x: jax.Array) -> jax.Array:
    """erfc(u) for u = |x| / sqrt(2) >= 0 (A&S 7.1.26, absolute error <= 1.5e-7).

    exp(-u^2) is computed as exp2(x^2 * (-log2(e) / 2)) and t = 1 / (1 + p u) with
    :func:`_reciprocal_ge1` (no division).
    """
    t = _reciprocal_ge1(1.0 + _AS_P * u)
    a1, a2, a3, a4, a5 = _AS_A
    poly = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))))
    return poly * jnp.exp2((x * x) * (-0.5 * _LOG2E))


def gelu_exact_kernel(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, x * Phi(x) (Hendrycks & Gimpel 2016), without lax.erf.

    Phi(x) = 1 - erfc(x/sqrt2)/2 for x >= 0 and erfc(-x/sqrt2)/2 for x < 0, so the negative
    tail is computed without cancellation. Absolute error of Phi <= 7.5e-8 (A&S) plus a few
    f32 ulp from exp2 / rsqrt.
    """
    half_tail = 0.5 * _erfc_nonneg_times_exp(jnp.abs(x) * (1.0 / math.sqrt(2.0)), x)
    phi = jnp.where(x >= 0, 1.0 - half_tail, half_tail)
    return x * phi


def gelu_tanh(x: jax.Array) -> jax.Array:
    """tanh-approximated GELU (Hendrycks & Gimpel 2016), 0.5 x (1 + tanh(z)), written as the
    identical x * sigmoid(2 z) (exp2 + reciprocal instead of a libdevice tanh)."""
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))
    return x * _sigmoid_kernel(2.0 * inner)


def silu(x: jax.Array) -> jax.Array:
    """x * sigmoid(x) (Elfwing et al. 2018), with exp2 and a division-free reciprocal."""
    return x * _sigmoid_kernel(x)


def relu(x: jax.Array) -> jax.Array:
    return jnp.maximum(x, 0.0)


KERNEL_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": relu,
    "silu": silu,
    "gelu": gelu_exact_kernel,
    "gelu_tanh": gelu_tanh,
}

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
