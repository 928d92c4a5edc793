"""The CPU depthwise path (shifted slices) computes exactly what the library conv computes.

Every comparison runs jitted: eager dispatch of the per-tap slices and their gradients cost
12-19 s per case on a 5x7 image, one compile costs about a second.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from convfirst_jax import create_model
from convfirst_jax.models.cpu_paths import (depthwise_conv_shift_add, depthwise_impl,
                                            use_shift_add_depthwise)


def _lax_depthwise(x, w, b):
    k = w.shape[0]
    y = lax.conv_general_dilated(x, w, (1, 1), [(k // 2, k // 2)] * 2,
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                 feature_group_count=x.shape[-1],
                                 precision=lax.Precision.HIGHEST)
    return y + b


@pytest.mark.parametrize("k,c,h,w", [(3, 8, 5, 7), (7, 16, 3, 3), (5, 24, 1, 1)])
def test_shift_add_equals_lax_conv(k, c, h, w):
    kx, kw, kb = jax.random.split(jax.random.key(k * c + h), 3)
    x = jax.random.normal(kx, (2, h, w, c))
    wt = jax.random.normal(kw, (k, k, 1, c))
    b = jax.random.normal(kb, (c,))

    def value_and_grads(conv):
        def loss(x, wt):
            return jnp.sum(conv(x, wt, b) ** 2)
        return jax.jit(lambda x, wt: (conv(x, wt, b), jax.grad(loss, argnums=(0, 1))(x, wt)))

    got, (gx, gw) = value_and_grads(depthwise_conv_shift_add)(x, wt)
    want, (rx, rw) = value_and_grads(_lax_depthwise)(x, wt)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, rx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, rw, rtol=1e-4, atol=1e-3)


def test_model_output_same_with_either_depthwise_impl():
    model = create_model("convnext_atto", num_classes=10, seed=0)
    model.eval()
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    # The impl is chosen at trace time, so each scope traces its own jitted forward.
    with depthwise_impl("conv"):
        ref = nnx.jit(lambda m, v: m(v))(model, x)
    with depthwise_impl("shift_add"):
        out = nnx.jit(lambda m, v: m(v))(model, x)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_impl_selection_and_bad_name():
    with depthwise_impl("conv"):
        assert not use_shift_add_depthwise()
    with depthwise_impl("shift_add"):
        assert use_shift_add_depthwise()
    assert use_shift_add_depthwise() == (jax.default_backend() == "cpu")
    with pytest.raises(ValueError, match="valid: auto, conv, shift_add"):
        with depthwise_impl("winograd"):
            pass
