"""CPU paths equal the library ops: convs (im2col, grouped im2col, block-diagonal), the
2-d dense dot and the norms' written-out gradients (BatchNorm, LayerNorm) against float64 autodiff."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from convfirst_jax import create_model
from convfirst_jax.models.cpu_paths import (block_diagonal_kernel, conv_general_dilated,
                                            conv_im2col, conv_impl, conv_matmul_kernel_grad,
                                            dot_general, grouped_conv_im2col)


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
    fast = (conv_im2col(x, w, (s, s), pad) if g == 1 else grouped_conv_im2col(x, w, (s, s), pad))
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


def _dense_loss(impl, x, w):
    """sum(sin(x @ w)) of an nnx.Linear-style N-d dot under ``conv_impl(impl)``, jitted grad."""
    def f(x, w):
        with conv_impl(impl):
            y = dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))
        return jnp.sum(jnp.sin(y))
    return jax.jit(jax.grad(f, argnums=(0, 1)))


def test_dense_2d_path_matches_numpy_values_and_grads():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)
    w = rng.standard_normal((8, 12)).astype(np.float32)
    with conv_impl("im2col"):
        y = dot_general(jnp.asarray(x), jnp.asarray(w), (((3,), (0,)), ((), ())))
    y64 = x.astype(np.float64) @ w.astype(np.float64)
    np.testing.assert_allclose(np.asarray(y), y64, rtol=1e-5, atol=1e-5)
    g = np.cos(y64)  # d sum(sin(y)) / dy
    dx64 = g @ w.astype(np.float64).T
    dw64 = np.einsum("nhwi,nhwo->io", x.astype(np.float64), g)
    for impl in ("im2col", "conv"):
        dx, dw = _dense_loss(impl, x, w)(jnp.asarray(x), jnp.asarray(w))
        np.testing.assert_allclose(np.asarray(dx), dx64, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(dw), dw64, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU layout of the kernel grad")
def test_dense_2d_path_kernel_grad_has_no_transposed_cotangent():
    """The point of the 2-d path: XLA:CPU compiles the N-d dot's kernel gradient with the
    cotangent written out transposed; the 2-d dot's gradient has no transpose at all."""
    x = jnp.zeros((4, 8, 8, 32), jnp.float32)
    w = jnp.zeros((32, 128), jnp.float32)
    def transposes(impl):
        return _dense_loss(impl, x, w).lower(x, w).compile().as_text().count(" transpose(")
    assert transposes("conv") > 0  # the library N-d dot (if XLA stops doing this, drop the path)
    assert transposes("im2col") == 0


def test_unknown_impl_is_one_error():
    with pytest.raises(ValueError, match="valid: auto, conv, im2col"):
        with conv_impl("winograd"):
            pass


@pytest.mark.parametrize("hw,k", [(8, 7), (4, 3), (9, 3), (2, 7)])  # written-out grads
def test_depthwise_shift_add_gradient_matches_library_conv(hw, k):
    from convfirst_jax.models.cpu_paths import depthwise_conv_shift_add

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


def _norm_reference(kind, x, scale, bias, eps):
    """The norms' forward in plain jnp (float64 autodiff of it is the reference gradient)."""
    axes = tuple(range(x.ndim - 1)) if kind == "batchnorm" else (-1,)
    mean = x.mean(axes, keepdims=True)
    var = jnp.square(x - mean).mean(axes, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * scale + bias


@pytest.mark.parametrize("kind,shape", [("batchnorm", (4, 5, 5, 6)), ("batchnorm", (3, 7)),
                                        ("layernorm", (4, 5, 5, 6)), ("layernorm", (3, 7))])
def test_norm_written_out_gradient_matches_float64_autodiff(kind, shape):
    """The module in train mode (its CPU path): loss, input / scale / bias gradients and the
    new running statistics equal float64 autodiff of the plain formula and the library path."""
    from convfirst_jax.models.norms import make_norm

    rng = np.random.default_rng(3)
    c = shape[-1]
    x = rng.standard_normal(shape) * 3 + 1
    w = rng.standard_normal(shape)
    scale, bias = rng.standard_normal(c), rng.standard_normal(c)
    eps = 1e-5
    norm = make_norm(kind, c, eps=eps, dtype=jnp.float32, param_dtype=jnp.float32,
                     rngs=nnx.Rngs(0))
    norm.scale.set_value(jnp.asarray(scale, jnp.float32))
    norm.bias.set_value(jnp.asarray(bias, jnp.float32))
    graphdef, state = nnx.split(norm)

    def run(impl):
        def loss(state, x):
            with conv_impl(impl):
                m = nnx.merge(graphdef, state)
                return jnp.sum(jnp.sin(m(x)) * w), nnx.state(m)
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
            state, jnp.asarray(x, jnp.float32))

    (val, new_state), (g_state, g_x) = run("im2col")
    (val_lib, new_lib), (g_state_lib, g_x_lib) = run("conv")
    with jax.enable_x64():
        def ref(x, s, b):
            return jnp.sum(jnp.sin(_norm_reference(kind, x, s, b, eps)) * w)
        args = (jnp.asarray(x, jnp.float64), jnp.asarray(scale), jnp.asarray(bias))
        r_val = float(ref(*args))
        r_gx, r_gs, r_gb = (np.asarray(a) for a in jax.grad(ref, argnums=(0, 1, 2))(*args))
    np.testing.assert_allclose(float(val), r_val, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(g_x), r_gx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(g_state["scale"][...]), r_gs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(g_state["bias"][...]), r_gb, rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves((val, new_state, g_state, g_x)),
                    jax.tree.leaves((val_lib, new_lib, g_state_lib, g_x_lib))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_batch_norm_train_gradient_through_mean_and_var():
    """Cotangents of the returned batch mean and variance reach the input (float64)."""
    from convfirst_jax.models.norms import batch_norm_train

    rng = np.random.default_rng(4)
    with jax.enable_x64():
        x = jnp.asarray(rng.standard_normal((6, 3, 4)))
        s, b = jnp.asarray(rng.standard_normal(4)), jnp.asarray(rng.standard_normal(4))
        wy, wm, wv = (jnp.asarray(rng.standard_normal(v)) for v in ((6, 3, 4), 4, 4))

        def written(x, s, b):
            y, mean, var = batch_norm_train(x, s, b, 1e-3)
            return jnp.sum(jnp.sin(y) * wy) + jnp.sum(mean * wm) + jnp.sum(jnp.cos(var) * wv)

        def plain(x, s, b):
            mean = x.mean((0, 1))
            var = jnp.square(x - mean).mean((0, 1))
            y = (x - mean) * jax.lax.rsqrt(var + 1e-3) * s + b
            return jnp.sum(jnp.sin(y) * wy) + jnp.sum(mean * wm) + jnp.sum(jnp.cos(var) * wv)

        for a, r in zip(jax.grad(written, argnums=(0, 1, 2))(x, s, b),
                        jax.grad(plain, argnums=(0, 1, 2))(x, s, b)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", [  # (hw, cin, cout, k, stride, padding): stems and 3x3 convs
    (16, 3, 8, 7, 2, ((3, 3), (3, 3))), (12, 3, 8, 4, 4, ((0, 0), (0, 0))),
    (6, 8, 8, 3, 1, ((1, 1), (1, 1))), (7, 4, 6, 3, 2, ((0, 1), (1, 0)))])
def test_matmul_kernel_grad_matches_float64_loops(case):
    """conv_matmul_kernel_grad: forward and input gradient are the library conv's, and the
    kernel gradient of sum(y * r) equals the float64 loop sum over n, i, j of
    x_pad[n, s*i + dy, s*j + dx, ci] * r[n, i, j, co]."""
    hw, cin, cout, k, s, pad = case
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, hw, hw, cin)).astype(np.float32)
    w = rng.standard_normal((k, k, cin, cout)).astype(np.float32)
    y_ref = _numpy_conv(x.astype(np.float64), w.astype(np.float64), s, pad, 1)
    r = rng.standard_normal(y_ref.shape).astype(np.float32)
    got = conv_matmul_kernel_grad(jnp.asarray(x), jnp.asarray(w), (s, s), pad)
    np.testing.assert_allclose(np.asarray(got), y_ref, rtol=1e-5, atol=1e-4)

    xp = np.pad(x.astype(np.float64), ((0, 0), pad[0], pad[1], (0, 0)))
    ho, wo = y_ref.shape[1:3]
    dw_ref = np.zeros((k, k, cin, cout))
    for dy in range(k):
        for dx in range(k):
            tap = xp[:, dy:dy + s * (ho - 1) + 1:s, dx:dx + s * (wo - 1) + 1:s]
            dw_ref[dy, dx] = np.einsum("nijc,nijo->co", tap, r.astype(np.float64))

    def loss(conv):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w) * r), argnums=(0, 1)))(
            jnp.asarray(x), jnp.asarray(w))

    dx, dw = loss(lambda x, w: conv_matmul_kernel_grad(x, w, (s, s), pad))
    dx_lib, _ = loss(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")))
    np.testing.assert_allclose(np.asarray(dw), dw_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx_lib))


def test_auto_conv_takes_the_matmul_kernel_gradient_for_rgb_stems():
    """On the CPU the RGB stem's kernel gradient is a dot per tap, no backward convolution
    (the library conv's autodiff compiles one with an Ho x Wo window: slow on XLA:CPU)."""
    x = jnp.zeros((2, 32, 32, 3), jnp.float32)
    w = jnp.zeros((7, 7, 3, 16), jnp.float32)

    def grad_hlo(impl):
        def f(w):
            with conv_impl(impl):
                y = conv_general_dilated(x, w, (2, 2), ((3, 3), (3, 3)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.sum(y * y)
        return jax.jit(jax.grad(f)).lower(w).as_text()

    auto, library = grad_hlo("auto"), grad_hlo("conv")
    assert auto.count("stablehlo.convolution") == 1 and "stablehlo.dot_general" in auto
    assert library.count("stablehlo.convolution") == 2
