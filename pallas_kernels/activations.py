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

# Abramowitz & Stegun (1964), formula 7.1.26: for u >= 0,
#   erfc(u) ~= t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5)))) * exp(-u^2),
#   t = 1 / (1 + p u),  |error| <= 1.5e-7.
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erfc_nonneg(u: jax.Array) -> jax.Array:
    """erfc(u) for u >= 0 (A&S 7.1.26, absolute error <= 1.5e-7)."""
    t = 1.0 / (1.0 + _AS_P * u)
    a1, a2, a3, a4, a5 = _AS_A
    poly = t * (a1 + t * (a2 + t * (a3 + t * (a4 + t * a5))))
    return poly * jnp.exp(-u * u)


def gelu_exact_kernel(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, x * Phi(x) (Hendrycks & Gimpel 2016), without lax.erf.

    Phi(x) = 1 - erfc(x/sqrt2)/2 for x >= 0 and erfc(-x/sqrt2)/2 for x < 0, so the negative
    tail is computed without cancellation. Absolute error of Phi <= 7.5e-8.
    """
    half_tail = 0.5 * _erfc_nonneg(jnp.abs(x) * (1.0 / math.sqrt(2.0)))
    phi = jnp.where(x >= 0, 1.0 - half_tail, half_tail)
    return x * phi


def gelu_tanh(x: jax.Array) -> jax.Array:
    """tanh-approximated GELU (Hendrycks & Gimpel 2016)."""
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))
    return 0.5 * x * (1.0 + jnp.tanh(inner))


def silu(x: jax.Array) -> jax.Array:
    """x * sigmoid(x) (Elfwing et al. 2018), written with exp for the Triton lowering."""
    return x / (1.0 + jnp.exp(-x))


def relu(x: jax.Array) -> jax.Array:
    return jnp.maximum(x, 0.0)


KERNEL_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": relu,
    "silu": silu,
    "gelu": gelu_exact_kernel,
    "gelu_tanh": gelu_tanh,
}

REFERENCE_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}
