"""CPU conv paths (im2col, per-tap grouped matmuls, block-diagonal) equal the library conv."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convfirst_jax import create_model
from convfirst_jax.models.layers import (block_diagonal_kernel, conv_general_dilated,
                                         conv_im2col, conv_impl, grouped_conv_taps)


def _numpy_conv(x, w, stride, pad, groups):
    """Direct loops (independent of XLA): NHWC x HWIO, zero padding, feature groups."""
    n, h, wd, cin = x.shape
    kh, kw, ci, cout = w.shape
    xp = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    cog = cout // groups
    out = np.zeros((n, ho, wo, cout), np.float64)
    for g in range(groups):
        xs = xp[..., g * ci:(g + 1) * ci]
        for dy in range(kh):
            for dx in range(kw):
                tap = xs[:, dy:dy + stride * (ho - 1) + 1:stride,
                         dx:dx + stride * (wo - 1) + 1:stride]
                out[..., g * cog:(g + 1) * cog] += tap @ w[dy, dx, :, g * cog:(g + 1) * cog]
    return out


CASES = [  # (hw, cin, cout, k, stride, pad, groups)
    (5, 8, 16, 3, 2, 1, 1), (2, 16, 16, 3, 1, 1, 1), (8, 8, 12, 2, 2, 0, 1),
    (6, 16, 16, 3, 1, 1, 2), (6, 64, 64, 3, 2, 1, 8), (4, 32, 32, 3, 1, 1, 4)]


@pytest.mark.parametrize("case", CASES)
def test_paths_match_numpy_and_library_grads(case):
    hw, cin, cout, k, s, p, g = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, hw, hw, cin)).astype(np.float32)
    w = rng.standard_normal((k, k, cin // g, cout)).astype(np.float32)
    pad = ((p, p), (p, p))
    ref = _numpy_conv(x.astype(np.float64), w.astype(np.float64), s, pad, g)
    fast = (conv_im2col(x, w, (s, s), pad) if g == 1 else grouped_conv_taps(x, w, (s, s), pad))
    np.testing.assert_allclose(np.asarray(fast), ref, rtol=1e-5, atol=1e-4)
    if g > 1:
        dense = conv_im2col(x, block_diagonal_kernel(jnp.asarray(w), g), (s, s), pad)
        np.testing.assert_allclose(np.asarray(dense), ref, rtol=1e-5, atol=1e-4)

    def loss(impl):
        def f(x, w):
            with conv_impl(impl):
                y = conv_general_dilated(x, w, (s, s), pad, dimension_numbers=(
                    "NHWC", "HWIO", "NHWC"), feature_group_count=g)
            return jnp.sum(jnp.sin(y))
        return jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(w))

    for a, b in zip(loss("im2col"), loss("conv")):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["convfirst_atto_gw8"])  # dense, strided and grouped convs
def test_model_output_same_with_either_conv_impl(name):
    model = create_model(name, num_classes=5, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)

    def forward(impl):  # the path is chosen at trace time
        def f(state, x):
            with conv_impl(impl):
                return nnx.merge(graphdef, state)(x)
        return jax.jit(f)(state, x)

    ref, fast = forward("conv"), forward("im2col")
    np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=1e-4, atol=1e-5)


def test_unknown_impl_is_one_error():
    with pytest.raises(ValueError, match="valid: auto, conv, im2col"):
        with conv_impl("winograd"):
            pass


@pytest.mark.parametrize("hw,k", [(8, 7), (4, 3), (9, 3), (2, 7)])  # written-out grads
def test_depthwise_shift_add_gradient_matches_library_conv(hw, k):
    from convfirst_jax.models.layers import depthwise_conv_shift_add

    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, hw, hw, 6)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, 1, 6)), jnp.float32)
    b = jnp.asarray(rng.standard_normal((6,)), jnp.float32)

    def lib(x, w, b):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), ((k // 2, k // 2),) * 2,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         feature_group_count=6)
        return jnp.sum(jnp.sin(y + b))

    def fast(x, w, b):
        return jnp.sum(jnp.sin(depthwise_conv_shift_add(x, w, b)))

    for a, r in zip(jax.jit(jax.grad(fast, argnums=(0, 1, 2)))(x, w, b),
                    jax.jit(jax.grad(lib, argnums=(0, 1, 2)))(x, w, b)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-4, atol=1e-4)
