"""The CPU max pool (strided slices, written-out gradient) equals nnx.max_pool and numpy loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convfirst_jax.models.cpu_paths import max_pool, max_pool_shifted


def _numpy_pool(x, ct, window, stride, pad):
    """Direct loops: -inf padding; the gradient goes to the first maximum (row-major) of each
    window, as PyTorch's max_pool2d and XLA's select_and_scatter."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)), constant_values=-np.inf)
    (kh, kw), (sh, sw) = window, stride
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    out = np.empty((n, ho, wo, c), x.dtype)
    dxp = np.zeros(xp.shape, np.float64)
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                for ch in range(c):
                    win = xp[b, i * sh:i * sh + kh, j * sw:j * sw + kw, ch].ravel()
                    k = int(np.argmax(win))  # first maximum in row-major order
                    out[b, i, j, ch] = win[k]
                    dxp[b, i * sh + k // kw, j * sw + k % kw, ch] += ct[b, i, j, ch]
    return out, dxp[:, pad[0][0]:pad[0][0] + h, pad[1][0]:pad[1][0] + w]


CASES = [  # (shape, window, stride, padding)
    ((2, 12, 12, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),   # ResNet's stem pool
    ((2, 9, 7, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),     # odd sizes
    ((2, 8, 8, 2), (2, 2), (2, 2), ((0, 0), (0, 0))),
    ((1, 6, 6, 2), (3, 3), (1, 1), ((1, 1), (1, 1))),     # overlapping windows, stride 1
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_shifted_matches_loops_and_reduce_window(case, ties):
    shape, window, stride, pad = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    if ties:  # ReLU zeros and repeated integers: the tie rule decides where the gradient goes
        x = np.maximum(np.round(2 * x), 0).astype(np.float32)
    y, vjp = jax.vjp(lambda v: max_pool_shifted(v, window, stride, pad), jnp.asarray(x))
    ct = rng.standard_normal(y.shape).astype(np.float32)
    (dx,) = vjp(jnp.asarray(ct))
    ref_y, ref_dx = _numpy_pool(x, ct, window, stride, pad)
    np.testing.assert_array_equal(np.asarray(y), ref_y)
    np.testing.assert_allclose(np.asarray(dx), ref_dx, rtol=1e-6, atol=1e-6)
    lib_y, lib_vjp = jax.vjp(lambda v: nnx.max_pool(v, window, strides=stride, padding=pad),
                             jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(lib_y))
    np.testing.assert_allclose(np.asarray(dx), np.asarray(lib_vjp(jnp.asarray(ct))[0]),
                               rtol=1e-6, atol=1e-6)


def test_max_pool_dispatch_under_jit_equals_library():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 10, 10, 3)), jnp.float32)
    args = ((3, 3), (2, 2), ((1, 1), (1, 1)))

    def loss(f):
        return lambda v: jnp.sum(jnp.sin(f(v, args[0], strides=args[1], padding=args[2])))

    g_new = jax.jit(jax.grad(loss(max_pool)))(x)
    g_lib = jax.jit(jax.grad(loss(nnx.max_pool)))(x)
    np.testing.assert_allclose(np.asarray(g_new), np.asarray(g_lib), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(max_pool(x, args[0], strides=args[1],
                                                      padding=args[2])),
                                  np.asarray(nnx.max_pool(x, args[0], strides=args[1],
                                                          padding=args[2])))


def test_max_pool_follows_the_conv_impl_scope():
    """The library variant (conv_impl("conv")) traces the library op, "im2col" the slices."""
    from convfirst_jax.models.cpu_paths import conv_impl

    x = jnp.zeros((1, 8, 8, 2), jnp.float32)
    args = dict(strides=(2, 2), padding=((1, 1), (1, 1)))

    def primitives(impl):
        with conv_impl(impl):
            jaxpr = jax.make_jaxpr(lambda v: max_pool(v, (3, 3), **args))(x)
        return {str(e.primitive) for e in jaxpr.jaxpr.eqns}

    assert any("reduce_window" in p for p in primitives("conv"))
    assert not any("reduce_window" in p for p in primitives("im2col"))
