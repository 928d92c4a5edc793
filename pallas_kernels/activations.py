"""Activation functions of the conv-first block, in reference and in kernel form.

The reference forms are jax.nn's. The kernel forms use only primitives the Pallas Triton
lowering supports (it has no ``erf``) and no division, in two families chosen by the block's
dtype (:func:`kernel_activation`):

- float32 / float16 blocks (:data:`KERNEL_ACTIVATIONS`): the functions themselves, exact GELU
  included (A&S 7.1.26, |error of Phi| <= 7.5e-8), from exp2 and one ``reciprocal`` argument:
  :func:`reciprocal_mufu` (one ``MUFU.RCP``, PTX ``rcp.approx.ftz.f32``, <= 1 ulp) in the
  Triton kernel and :func:`reciprocal_exact` (a correctly rounded f32 division) in the Pallas
  interpreter, which cannot run PTX. 2 MUFU operations per hidden element (EX2, RCP).
- bfloat16 blocks (:data:`BF16_KERNEL_ACTIVATIONS`): every sigmoid-shaped activation as
  ``x (1 + tanh(u)) / 2``, one ``tanh`` argument: :func:`tanh_mufu` (one ``MUFU.TANH``, PTX
  ``tanh.approx.f32``, relative error <= 2^-11) in the Triton kernel, :func:`tanh_exact` in the
  interpreter. 1 MUFU operation per hidden element. "gelu" is then the logistic form of Phi
  (Bowling et al. 2009), |error of Phi| <= 1.42e-4; "silu" and "gelu_tanh" are exact
  identities. Why only bfloat16: the kernel rounds h = act(.) to the block's dtype before
  the project GEMM, and under bfloat16's 2^-9 relative rounding these errors do not show
  (numpy emulation, ``docs/results/static-h100/activation_probe_c64/precision.py``: rms error
  of h against the float64 exact GELU 2.31e-3 exact, 2.32e-3 logistic, 2.38e-3 with the
  worst systematic ``tanh.approx`` error), while under float16's 2^-12 they would (rms 2.9e-4
  exact vs 6.3e-4 worst case). The GELU forms return twice the GELU, ``x + x tanh(u)``
  (:func:`kernel_hidden_scale`): the kernels divide w2 by 2 instead, which changes no bit of
  ``h @ w2`` and saves a multiply per hidden element.

Everything else is the same code in the Triton kernel and the interpreter, so the CPU interpret
tests check the device's math up to one ulp per reciprocal (float32 / float16) or
``tanh.approx``'s 2^-11 (bfloat16).

Static H100 model, bf16 batch 128 (``python -m convfirst_jax.bench static``): the MUFU.RCP
form replaced ``rsqrt(v)**2`` and a Newton step (MUFU.RSQ + 3 FMA-pipe ops) and the exp2
argument cap that step needed: SiLU 12.2 -> 8.2 instructions per hidden element of the MLP
loop, exact GELU 23.3 -> 17.2 (with the folded constants and no select, below); C64 56x56 k3
affine-SiLU 66 -> 55 µs, LN-GELU 112 -> 91 µs. The bfloat16 tanh forms: see
``docs/results/static-h100/README.md`` (v6).
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

# Bowling, Khasawneh, Kaewkuekool & Cho (2009), "A logistic approximation to the cumulative
# normal distribution": Phi(x) ~= 1 / (1 + exp(-(1.5976 x + 0.07056 x^3))), max |error|
# 1.42e-4 (1.414e-4 at |x| = 1.476 on a 1e-5 grid of [-12, 12]); in tanh form
# Phi(x) ~= (1 + tanh(x (0.7988 + 0.03528 x^2))) / 2.
_BOWLING_A = 1.5976 / 2.0
_BOWLING_B = 0.07056 / 2.0
#: max |Phi_logistic(x) - Phi(x)|, so |gelu_logistic(x) - GELU(x)| <= this * |x|.
LOGISTIC_PHI_ERROR = 1.42e-4

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

Reciprocal = Callable[[jax.Array], jax.Array]
Tanh = Callable[[jax.Array], jax.Array]


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


def tanh_exact(v: jax.Array) -> jax.Array:
    """tanh(v) as XLA computes it: the interpreter's form of :func:`tanh_mufu`."""
    return jnp.tanh(v)


def tanh_mufu(v: jax.Array) -> jax.Array:
    """tanh(v) of float32 ``v`` as one ``MUFU.TANH`` (inline PTX ``tanh.approx.f32``, sm_75+:
    maximum relative error 2^-11 by the PTX ISA; tanh(+-inf) = +-1).

    Only for a Triton-lowered kernel body (the interpreter cannot run PTX). Triton would
    otherwise call libdevice's ``tanhf`` (a correctly rounded software tanh: ~20 FP32
    instructions and an EX2 + RCP per element).
    """
    [t] = plgpu.elementwise_inline_asm(
        "tanh.approx.f32 $0, $1;", args=[v], constraints="=f,f", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(v.shape, v.dtype)])
    return t


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


def relu(x: jax.Array, **approximations: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """max(x, 0), the kernel form in every dtype: nothing to approximate, so the
    ``reciprocal`` / ``tanh`` :func:`kernel_activation` passes is ignored."""
    del approximations
    return jnp.maximum(x, 0.0)


#: The kernel forms, each ``f(x, reciprocal)``; a kernel body takes its function from
#: :func:`kernel_activation`.
KERNEL_ACTIVATIONS: dict[str, Callable[[jax.Array, Reciprocal], jax.Array]] = {
    "relu": relu,
    "silu": silu,
    "gelu": gelu_exact_kernel,
    "gelu_tanh": gelu_tanh,
}


def _x_one_plus_tanh(x: jax.Array, u: jax.Array, tanh: Tanh) -> jax.Array:
    """x (1 + tanh(u)) as x + x tanh(u): one tanh and one FMA (u -> -inf: the result is
    exactly 0; u -> +inf: 2 x)."""
    return x + x * tanh(u)


def _half_x_one_plus_tanh(x: jax.Array, u: jax.Array, tanh: Tanh) -> jax.Array:
    """x (1 + tanh(u)) / 2 as x/2 + x/2 tanh(u): one tanh and one FMA (u -> -inf: tanh = -1
    and the result exactly 0; u -> +inf: x)."""
    half_x = 0.5 * x
    return half_x + half_x * tanh(u)


def gelu_logistic(x: jax.Array, tanh: Tanh = tanh_exact) -> jax.Array:
    """2 x Phi(x), twice the GELU with the logistic Phi of Bowling et al. (2009): the
    bfloat16 kernel form of "gelu" (:func:`kernel_hidden_scale` 2): |result / 2 - GELU(x)|
    <= :data:`LOGISTIC_PHI_ERROR` |x| (plus the tanh's error times |x| / 2). One tanh and 4
    FP32 operations per element."""
    return _x_one_plus_tanh(x, x * (_BOWLING_A + _BOWLING_B * (x * x)), tanh)


def gelu_tanh_bf16(x: jax.Array, tanh: Tanh = tanh_exact) -> jax.Array:
    """Twice the tanh-approximated GELU (Hendrycks & Gimpel 2016), x (1 + tanh(sqrt(2/pi)
    (x + 0.044715 x^3))), with one tanh: the bfloat16 kernel form of "gelu_tanh"
    (:func:`kernel_hidden_scale` 2). u as x (a + b x^2): 3 FP32 operations."""
    inner = x * (_SQRT_2_OVER_PI + (_SQRT_2_OVER_PI * 0.044715) * (x * x))
    return _x_one_plus_tanh(x, inner, tanh)


def silu_bf16(x: jax.Array, tanh: Tanh = tanh_exact) -> jax.Array:
    """x sigmoid(x) = x/2 + x/2 tanh(x/2) (Elfwing et al. 2018), one tanh: the bfloat16
    kernel form of "silu"."""
    return _half_x_one_plus_tanh(x, 0.5 * x, tanh)


#: The bfloat16 kernel forms (see the module docstring for why only bfloat16): per name
#: ``(f(x, tanh), s)``, f computing s times the activation (:func:`kernel_hidden_scale`). The
#: GELUs take s = 2: x (1 + tanh u) instead of x/2 + x/2 tanh u drops the multiply by 1/2
#: (SiLU needs x/2 as its tanh argument anyway). Static H100 model, C64 56x56 k3 LN-GELU bf16
#: batch 128: 9.6 -> 8.6 instructions per hidden element, 63.6 -> 60.2 µs
#: (docs/results/static-h100/activation_probe_c64/).
BF16_KERNEL_ACTIVATIONS: dict[str, tuple[Callable[[jax.Array, Tanh], jax.Array], float]] = {
    "relu": (relu, 1.0),
    "silu": (silu_bf16, 1.0),
    "gelu": (gelu_logistic, 2.0),
    "gelu_tanh": (gelu_tanh_bf16, 2.0),
}


def kernel_hidden_scale(name: str, dtype: jnp.dtype | type | str) -> float:
    """s such that the kernel form of ``name`` (:func:`kernel_activation`) computes s times the
    activation: 2 for the bfloat16 GELUs, else 1. The kernels multiply w2 by 1 / s
    (:func:`pallas_kernels.operands.mlp_operands`): scaling by a power of two is exact in f32
    and in bfloat16 (w2 and h normal, no overflow), so ``(s h) @ (w2 / s)`` equals ``h @ w2``
    bit for bit, and so do the roundings of h and of every partial sum."""
    if jnp.dtype(dtype) == jnp.bfloat16:
        return BF16_KERNEL_ACTIVATIONS[name][1]
    return 1.0


def kernel_activation(name: str, *, triton: bool,
                      dtype: jnp.dtype | type | str = jnp.float32
                      ) -> Callable[[jax.Array], jax.Array]:
    """The kernel form of activation ``name`` for a block of activation dtype ``dtype`` whose
    body is lowered by Triton (``triton=True``: :func:`reciprocal_mufu` /
    :func:`tanh_mufu`) or run by the Pallas interpreter (:func:`reciprocal_exact` /
    :func:`tanh_exact`): :data:`BF16_KERNEL_ACTIVATIONS` for bfloat16,
    :data:`KERNEL_ACTIVATIONS` otherwise."""
    if jnp.dtype(dtype) == jnp.bfloat16:
        return functools.partial(BF16_KERNEL_ACTIVATIONS[name][0],
                                 tanh=tanh_mufu if triton else tanh_exact)
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
