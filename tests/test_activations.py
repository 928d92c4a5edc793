"""The kernel forms of the block's activations (pallas_kernels/activations.py) against float64
references written here from their definitions (math.erf, exp), over the whole useful range
and the far tails: the float32 / float16 family (exp2 + reciprocal) and the bfloat16 family
(one tanh)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from pallas_kernels import activations

X = np.concatenate([np.linspace(-12.0, 12.0, 48001), np.geomspace(1e-6, 60.0, 801),
                    -np.geomspace(1e-6, 60.0, 801), [0.0]]).astype(np.float32)
XD = X.astype(np.float64)
_ERF = np.vectorize(math.erf)

REFERENCE_FNS = {
    "gelu": lambda v: v * 0.5 * (1.0 + _ERF(v / math.sqrt(2.0))),
    "gelu_tanh": lambda v: 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                                     * (v + 0.044715 * v ** 3))),
    "silu": lambda v: v / (1.0 + np.exp(-v)),
    "relu": lambda v: np.maximum(v, 0.0),
}
REFERENCES = {name: fn(XD) for name, fn in REFERENCE_FNS.items()}
# f32 evaluation: a few roundings of values <= max(1, |x|) (2^-24 relative each) and exp2 (2
# ulp); the erf form adds A&S 7.1.26's 7.5e-8 absolute error of Phi, times |x|.
F32_ROUNDINGS = 4 * 2.0 ** -24
AS_PHI_ERROR = 7.5e-8



@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16, jnp.bfloat16])
@pytest.mark.parametrize("name", sorted(activations.KERNEL_ACTIVATIONS))
def test_interpreter_form_matches_float64(name, dtype):
    """f32 evaluation of each dtype's form (the kernel applies it to the f32 accumulator and
    rounds afterwards); the bfloat16 "gelu" is the logistic Phi, 1.42e-4 from the erf's."""
    got = np.asarray(activations.kernel_activation(name, triton=False, dtype=dtype)(
        jnp.asarray(X)), np.float64) / activations.kernel_hidden_scale(name, dtype)
    bound = F32_ROUNDINGS * np.maximum(1.0, np.abs(XD))
    if name == "gelu":
        phi_error = (activations.LOGISTIC_PHI_ERROR if dtype == jnp.bfloat16
                     else AS_PHI_ERROR)
        bound = bound + phi_error * np.abs(XD)
    err = np.abs(got - REFERENCES[name])
    assert np.all(np.isfinite(got))
    worst = int(np.argmax(err / bound))
    assert err[worst] <= bound[worst], (name, X[worst], got[worst], REFERENCES[name][worst])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu"])
def test_limits_at_infinity(name, dtype):
    fn = activations.kernel_activation(name, triton=False, dtype=dtype)
    big = jnp.asarray([-1e30, -100.0, 100.0, 1e30], jnp.float32)
    got = np.asarray(fn(big)) / activations.kernel_hidden_scale(name, dtype)
    assert got[0] == 0.0 and abs(got[1]) < 1e-30, got
    np.testing.assert_allclose(got[2:], [100.0, 1e30], rtol=1e-7)


def test_triton_form_uses_the_mufu_approximations():
    """Triton bodies get one MUFU.RCP per reciprocal (float32 / float16 blocks) or one
    MUFU.TANH (bfloat16 blocks); the interpreter, which cannot run PTX, the exact forms."""
    for name in ("gelu", "gelu_tanh", "silu"):
        for dtype in (jnp.float32, jnp.float16, "float16"):
            assert (activations.kernel_activation(name, triton=True, dtype=dtype)
                    .keywords["reciprocal"] is activations.reciprocal_mufu)
            assert (activations.kernel_activation(name, triton=False, dtype=dtype)
                    .keywords["reciprocal"] is activations.reciprocal_exact)
        for dtype in (jnp.bfloat16, "bfloat16"):
            assert (activations.kernel_activation(name, triton=True, dtype=dtype)
                    .keywords["tanh"] is activations.tanh_mufu)
            assert (activations.kernel_activation(name, triton=False, dtype=dtype)
                    .keywords["tanh"] is activations.tanh_exact)
    with pytest.raises(KeyError):
        activations.kernel_activation("swish", triton=True)


def _relative_tanh(sign: float):
    """A tanh with tanh.approx.f32's whole error budget (2^-11 relative, PTX ISA) in one
    direction: the worst systematic device error the interpreter cannot show."""
    return lambda v: jnp.tanh(v) * (1.0 + sign * 2.0 ** -11)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("name", ["gelu", "silu"])
def test_bf16_forms_hide_under_the_rounding_of_h(name, sign):
    """The design claim behind the bfloat16 family: after the kernel rounds h to bfloat16,
    the logistic Phi plus the worst systematic tanh.approx error add at most 5 % to the rms
    error of h against the float64 function, and bias it by at most a fifth of that rms
    (x ~ N(0, 4), as in docs/results/static-h100/activation_probe_c64/precision.py)."""
    x = np.random.default_rng(0).standard_normal(200_000).astype(np.float32) * 2
    xd = x.astype(np.float64)
    exact = REFERENCE_FNS[name](xd)
    form, _ = activations.BF16_KERNEL_ACTIVATIONS[name]
    h = np.asarray(form(jnp.asarray(x), _relative_tanh(sign)), np.float32)
    h = h / np.float32(activations.kernel_hidden_scale(name, jnp.bfloat16))  # exact

    def rounded_error(v):
        return v.astype(ml_dtypes.bfloat16).astype(np.float64) - exact

    rms_exact = np.sqrt(np.mean(rounded_error(exact.astype(np.float32)) ** 2))
    err = rounded_error(h)
    assert np.sqrt(np.mean(err ** 2)) <= 1.05 * rms_exact
    assert abs(err.mean()) <= 0.2 * rms_exact


def test_hidden_scale_is_two_for_the_bf16_gelus_only():
    scale = activations.kernel_hidden_scale
    assert scale("gelu", jnp.bfloat16) == scale("gelu_tanh", "bfloat16") == 2.0
    assert scale("silu", jnp.bfloat16) == scale("relu", jnp.bfloat16) == 1.0
    assert all(scale(n, d) == 1.0 for n in activations.KERNEL_ACTIVATIONS
               for d in (jnp.float32, jnp.float16))
