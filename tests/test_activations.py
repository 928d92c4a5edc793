"""The kernel forms of the block's activations (pallas_kernels/activations.py) against float64
references written here from their definitions (math.erf, exp), over the whole useful range
and the far tails."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import activations

X = np.concatenate([np.linspace(-12.0, 12.0, 48001), np.geomspace(1e-6, 60.0, 801),
                    -np.geomspace(1e-6, 60.0, 801), [0.0]]).astype(np.float32)
XD = X.astype(np.float64)
_ERF = np.vectorize(math.erf)

REFERENCES = {
    "gelu": XD * 0.5 * (1.0 + _ERF(XD / math.sqrt(2.0))),
    "gelu_tanh": 0.5 * XD * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (XD + 0.044715 * XD ** 3))),
    "silu": XD / (1.0 + np.exp(-XD)),
    "relu": np.maximum(XD, 0.0),
}
# f32 evaluation: a few roundings of values <= max(1, |x|) (2^-24 relative each) and exp2 (2
# ulp); the erf form adds A&S 7.1.26's 7.5e-8 absolute error of Phi, times |x|.
F32_ROUNDINGS = 4 * 2.0 ** -24
AS_PHI_ERROR = 7.5e-8


@pytest.mark.parametrize("name", sorted(activations.KERNEL_ACTIVATIONS))
def test_interpreter_form_matches_float64(name):
    got = np.asarray(activations.kernel_activation(name, triton=False)(jnp.asarray(X)),
                     np.float64)
    bound = F32_ROUNDINGS * np.maximum(1.0, np.abs(XD))
    if name == "gelu":
        bound = bound + AS_PHI_ERROR * np.abs(XD)
    err = np.abs(got - REFERENCES[name])
    assert np.all(np.isfinite(got))
    worst = int(np.argmax(err / bound))
    assert err[worst] <= bound[worst], (name, X[worst], got[worst], REFERENCES[name][worst])


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu"])
def test_limits_at_infinity(name):
    fn = activations.kernel_activation(name, triton=False)
    big = jnp.asarray([-1e30, -100.0, 100.0, 1e30], jnp.float32)
    got = np.asarray(fn(big))
    assert got[0] == 0.0 and abs(got[1]) < 1e-30, got
    np.testing.assert_allclose(got[2:], [100.0, 1e30], rtol=1e-7)


def test_triton_form_uses_the_mufu_reciprocal():
    """Triton bodies get one MUFU.RCP per reciprocal (the interpreter cannot run PTX)."""
    for name in ("gelu", "gelu_tanh", "silu"):
        assert (activations.kernel_activation(name, triton=True).keywords["reciprocal"]
                is activations.reciprocal_mufu)
        assert (activations.kernel_activation(name, triton=False).keywords["reciprocal"]
                is activations.reciprocal_exact)
    with pytest.raises(KeyError):
        activations.kernel_activation("swish", triton=True)
