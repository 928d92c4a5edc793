"""CPU paths: how convs, depthwise convs and max pools are traced, and the forms they take.

The scoped choices (:func:`depthwise_impl`, :func:`conv_impl`; "auto" takes the CPU forms on
the CPU backend only) and the forms XLA's CPU backend runs fast: depthwise convs as shifted
slices (:func:`depthwise_conv_shift_add`), dense convs as im2col matmuls (:func:`conv_im2col`)
or as the library conv with a matmul kernel gradient (:func:`conv_matmul_kernel_grad`),
grouped convs as block-diagonal dense convs or one batched matmul
(:func:`block_diagonal_kernel`, :func:`grouped_conv_im2col`), all dispatched by
:func:`conv_general_dilated`, dense layers on N-d inputs as 2-d dots (:func:`dot_general`),
and max pools as the max of strided slices
(:func:`max_pool_shifted`). Every form computes the library op's values.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


def _scoped_choice(var: contextvars.ContextVar[str], impl: str, valid: tuple[str, ...],
                   kind: str) -> contextlib.AbstractContextManager[None]:
    """Set ``var`` to ``impl`` (one of ``valid``) for a ``with`` scope, restoring it after."""
    if impl not in valid:
        raise ValueError(f"unknown {kind} impl {impl!r}; valid: {', '.join(valid)}")

    @contextlib.contextmanager
    def scope() -> Iterator[None]:
        token = var.set(impl)
        try:
            yield
        finally:
            var.reset(token)

    return scope()


_DEPTHWISE_IMPL: contextvars.ContextVar[str] = contextvars.ContextVar("depthwise_impl",
                                                                     default="auto")
DEPTHWISE_IMPLS = ("auto", "conv", "shift_add")


def depthwise_impl(impl: str) -> contextlib.AbstractContextManager[None]:
    """Choose how depthwise (group width 1) convs of the XLA blocks are traced, in a scope.

    "auto" (default): shifted slices on the CPU, the library conv (cuDNN) elsewhere; "conv":
    always ``lax.conv_general_dilated``; "shift_add": always :func:`depthwise_conv_shift_add`.
    Both compute the same values. XLA's cost analysis charges the shift-add form twice the
    flops per multiply-add, so the complexity cross-check traces with "conv".
    """
    return _scoped_choice(_DEPTHWISE_IMPL, impl, DEPTHWISE_IMPLS, "depthwise")


def use_cpu_paths(impl: str, forced: str) -> bool:
    """Whether a layer traced now takes its CPU path: the scoped choice ``impl`` is
    ``forced`` (always) or "auto" on the CPU backend."""
    return impl == forced or (impl == "auto" and jax.default_backend() == "cpu")


def use_shift_add_depthwise() -> bool:
    """Whether a depthwise conv traced now should use :func:`depthwise_conv_shift_add`."""
    return use_cpu_paths(_DEPTHWISE_IMPL.get(), "shift_add")


def depthwise_conv_shift_add(x: Array, kernel: Array, bias: Array | None) -> Array:
    """k x k depthwise conv, "SAME" zero padding, as a sum of k*k shifted slices.

    The same arithmetic as ``lax.conv_general_dilated(..., feature_group_count=C)`` with a
    (k, k, 1, C) kernel, accumulated in float32. XLA's CPU backend has no fast depthwise conv:
    its gradient is 5-14x slower than this form (measured on 2 cores for C 32-160, 3x3 and
    7x7), so the blocks use it on the CPU; GPUs keep the library conv. The gradient is written
    out (:func:`_depthwise_bwd`): the input gradient is the same shift-add with the flipped
    kernel, the kernel gradient per kernel row one batched matmul. Autodiff's k*k separate
    reductions over N, H, W were 2-6x slower for ConvNeXt's 7x7 at 16x16 and 8x8; on the small
    maps (4x4, 2x2) autodiff is as fast in isolation, but inside a whole train step XLA then
    materialises every tap as a saved residual (49 per 7x7 layer): the written-out gradient
    everywhere made ConvNeXt-atto's CPU train step 1.4x faster (151 -> 210 images/s, batch 64,
    64 px, 2 cores; ConvFirst-atto 268 -> 284).
    """
    w = kernel.astype(x.dtype)
    out = _depthwise(x, w)  # float32 sums, same values
    if bias is not None:
        out = out + bias.astype(jnp.float32)
    return out.astype(x.dtype)


def _shift_add(x: Array, w: Array) -> Array:
    """Sum of the k*k shifted slices of zero-padded ``x`` times ``w[dy, dx, 0]``, in float32."""
    k = w.shape[0]
    p = k // 2
    height, width = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = jnp.zeros(x.shape, jnp.float32)
    for dy in range(k):
        for dx in range(k):
            tap = xp[:, dy:dy + height, dx:dx + width, :] * w[dy, dx, 0]
            out = out + tap.astype(jnp.float32)
    return out


@jax.custom_vjp
def _depthwise(x: Array, w: Array) -> Array:
    return _shift_add(x, w)


def _depthwise_fwd(x: Array, w: Array):
    return _shift_add(x, w), (x, w)


def _depthwise_bwd(res, g: Array):
    """dx = shift-add of g with the flipped kernel; dw[dy, dx, c] = sum over N, H, W of
    xpad[n, h + dy, w + dx, c] * g[n, h, w, c]: per kernel row dy one matmul over the N*H rows
    batched over channels, (C, W + 2p, W), whose k diagonals are the k taps of that row."""
    x, w = res
    k = w.shape[0]
    p = k // 2
    n, height, width, c = x.shape
    dx = _shift_add(g.astype(x.dtype), w[::-1, ::-1]).astype(x.dtype)
    xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    gg = g.astype(x.dtype).reshape(n * height, width, c)
    rows = []
    for dy in range(k):
        a = xp[:, dy:dy + height].reshape(n * height, width + 2 * p, c)
        b = jnp.einsum("ric,rjc->cij", a, gg, preferred_element_type=jnp.float32)
        rows.append(jnp.stack([jnp.trace(b, offset=-j, axis1=1, axis2=2) for j in range(k)]))
    dw = jnp.stack(rows)[:, :, None, :].astype(w.dtype)
    return dx, dw


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)

_CONV_IMPL: contextvars.ContextVar[str] = contextvars.ContextVar("conv_impl", default="auto")
CONV_IMPLS = ("auto", "conv", "im2col")
#: "auto" uses im2col on the CPU for strided convs and for outputs of at most this many pixels.
IM2COL_MAX_OUTPUT_PIXELS = 16


def conv_impl(impl: str) -> contextlib.AbstractContextManager[None]:
    """Choose how dense (ungrouped) convs of every model are traced, in a scope.

    "auto" (default): on the CPU, :func:`conv_im2col` for strided convs and for convs whose
    output has at most :data:`IM2COL_MAX_OUTPUT_PIXELS` pixels, else the library conv with
    per-tap matmuls for its kernel gradient (:func:`conv_matmul_kernel_grad`);
    ``lax.conv_general_dilated`` with autodiff on every other backend; "conv": always the
    library conv with autodiff; "im2col": always
    :func:`conv_im2col` where it applies (ungrouped, undilated, NHWC/HWIO, explicit padding).
    Both compute the same sums (float rounding aside). ResNet's max pool follows the same
    choice (:func:`max_pool`: strided slices where im2col would be used, else the library op),
    and so do the norms' written-out gradients (:func:`use_norm_gradients`) and the 2-d form
    of dense layers (:func:`dot_general`).
    """
    return _scoped_choice(_CONV_IMPL, impl, CONV_IMPLS, "conv")


def use_norm_gradients() -> bool:
    """Whether a BatchNorm / LayerNorm traced now uses its written-out gradient
    (:func:`batch_norm_train`, :func:`layer_norm`): on the CPU paths, as :func:`max_pool`
    (``conv_impl`` "auto" on the CPU, or "im2col"); ``conv_impl("conv")`` keeps autodiff."""
    return use_cpu_paths(_CONV_IMPL.get(), "im2col")


def conv_im2col(x: Array, kernel: Array, strides: tuple[int, int],
                padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    """NHWC x HWIO convolution as one matmul over the k*k shifted (strided) slices of ``x``.

    Same sums as ``lax.conv_general_dilated(x, kernel, strides, padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"))``. Autodiff of slices, concatenation and one
    dot gives pads, slices and dots, which XLA's CPU backend runs at matmul speed; its own
    convolution gradients for strided convs and tiny (2x2, 4x4) feature maps fall off the fast
    Eigen path (up to 150x slower, measured on 2 cores: ResNet-18's 2x2 3x3 convs at 64 px).
    """
    kh, kw, cin, cout = kernel.shape
    (pt, pb), (pl, pr) = padding
    sh, sw = strides
    if any(p for p in (pt, pb, pl, pr)):
        x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    n, hp, wp, _ = x.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    cols = [x[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw, :]
            for dy in range(kh) for dx in range(kw)]
    patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    y = jnp.dot(patches.reshape(n * ho * wo, kh * kw * cin), kernel.reshape(kh * kw * cin, cout),
                preferred_element_type=jnp.promote_types(x.dtype, kernel.dtype))
    return y.reshape(n, ho, wo, cout).astype(jnp.result_type(x.dtype, kernel.dtype))


def _library_conv(x: Array, kernel: Array, strides: tuple[int, int],
                  padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_matmul_kernel_grad(x: Array, kernel: Array, strides: tuple[int, int],
                            padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    """The library NHWC x HWIO conv, whose kernel gradient is 2-d matmuls.

    Forward and input gradient are ``lax.conv_general_dilated``'s. The kernel gradient
    dW[dy, dx] = X(dy, dx)^T G, with X(dy, dx) the (N*Ho*Wo, C_in) strided slice of the padded
    input that tap (dy, dx) reads and G the (N*Ho*Wo, C_out) output cotangent, is one dot per
    tap. XLA's CPU backend compiles the library conv's kernel gradient as a convolution with
    an Ho x Wo window, far below its matmul rate (2 cores, batch 64: ResNet-18's 7x7 RGB stem
    at 64 px 281 -> 102-116 ms; the other layouts tried are in
    ``docs/results/cpu-imagenette-64px/kernel_grad_isolation.md``, made by
    ``scripts/kernel_grad_isolation.py``).
    """
    return _library_conv(x, kernel, strides, padding)


def _conv_mkg_fwd(x, kernel, strides, padding):
    return _library_conv(x, kernel, strides, padding), (x, kernel)


def _conv_mkg_bwd(strides, padding, res, g):
    x, kernel = res
    kh, kw, cin, cout = kernel.shape
    _, x_vjp = jax.vjp(lambda v: _library_conv(v, kernel, strides, padding), x)
    (dx,) = x_vjp(g)
    (pt, pb), (pl, pr) = padding
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0))) if any((pt, pb, pl, pr)) else x
    n, ho, wo, _ = g.shape
    sh, sw = strides
    g2 = g.reshape(n * ho * wo, cout)
    acc = jnp.promote_types(jnp.promote_types(x.dtype, kernel.dtype), jnp.float32)
    taps = [jax.lax.dot_general(
        xp[:, dy:dy + sh * (ho - 1) + 1:sh, dx_:dx_ + sw * (wo - 1) + 1:sw].reshape(-1, cin),
        g2, (((0,), (0,)), ((), ())), preferred_element_type=acc)
        for dy in range(kh) for dx_ in range(kw)]
    return dx, jnp.stack(taps).reshape(kh, kw, cin, cout).astype(kernel.dtype)


conv_matmul_kernel_grad.defvjp(_conv_mkg_fwd, _conv_mkg_bwd)


#: Grouped convs with at most this many groups run as one dense conv with a block-diagonal
#: kernel on the CPU ("auto"); more groups run as one batched matmul over the groups
#: (:func:`grouped_conv_im2col`).
BLOCK_DIAGONAL_MAX_GROUPS = 4


def grouped_conv_im2col(x: Array, kernel: Array, strides: tuple[int, int],
                        padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    """Grouped NHWC x HWIO conv (kernel (kh, kw, C_in / G, C_out)) as one batched matmul.

    Per group the k*k strided slices of the padded input are concatenated along the channel
    axis (im2col, ``(G, N * Ho * Wo, k * k * C_in / G)``) and multiplied by that group's
    ``(k * k * C_in / G, C_out / G)`` kernel, accumulated in float32: the same sums as
    ``lax.conv_general_dilated(..., feature_group_count=G)``. XLA's CPU gradient of grouped
    convs is 10-300x slower than per-tap matmuls (measured on 2 cores for ConvFirst gw8
    shapes), and one batched matmul over all taps beat a sum of k*k per-tap grouped
    matmuls inside a ConvFirst-atto-gw8 train step: XLA recomputed that k*k-term sum in
    every consumer of the conv output (``python -m convfirst_jax.bench train-compare``).
    """
    kh, kw, ci, cout = kernel.shape
    n, _, _, cin = x.shape
    groups = cin // ci
    co = cout // groups
    (pt, pb), (pl, pr) = padding
    sh, sw = strides
    if any(p for p in (pt, pb, pl, pr)):
        x = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    hp, wp = x.shape[1], x.shape[2]
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    xg = x.reshape(n, hp, wp, groups, ci)
    cols = [xg[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw]
            for dy in range(kh) for dx in range(kw)]
    patches = jnp.stack(cols, axis=4).reshape(n * ho * wo, groups, kh * kw * ci)
    w = kernel.reshape(kh * kw, ci, groups, co).transpose(2, 0, 1, 3).reshape(
        groups, kh * kw * ci, co)
    acc = jnp.promote_types(jnp.promote_types(x.dtype, kernel.dtype), jnp.float32)
    y = jnp.einsum("mgk,gko->mgo", patches, w, preferred_element_type=acc)
    return y.reshape(n, ho, wo, cout).astype(jnp.result_type(x.dtype, kernel.dtype))


def block_diagonal_kernel(kernel: Array, groups: int) -> Array:
    """The dense (kh, kw, G * ci, C_out) kernel of a grouped (kh, kw, ci, C_out) one (zeros
    off the diagonal blocks), so a grouped conv can run as an ungrouped one."""
    kh, kw, ci, cout = kernel.shape
    w = kernel.reshape(kh, kw, 1, ci, groups, cout // groups)
    eye = jnp.eye(groups, dtype=kernel.dtype).reshape(1, 1, groups, 1, groups, 1)
    return (w * eye).reshape(kh, kw, groups * ci, cout)


_NHWC_HWIO = jax.lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                          out_spec=(0, 3, 1, 2))


def _output_pixels(lhs_shape, rhs_shape, strides, pad) -> int:
    kh, kw = rhs_shape[:2]
    ho = (lhs_shape[1] + pad[0][0] + pad[0][1] - kh) // strides[0] + 1
    wo = (lhs_shape[2] + pad[1][0] + pad[1][1] - kw) // strides[1] + 1
    return ho * wo


def conv_general_dilated(lhs: Array, rhs: Array, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs) -> Array:
    """``lax.conv_general_dilated`` with CPU fast paths (``nnx.Conv(conv_general_dilated=)``).

    Undilated 2-d NHWC/HWIO convs with explicit (or "VALID") padding, as :func:`conv_impl`
    says (on the CPU under "auto"):

    * ungrouped: :func:`conv_im2col` for strided convs and outputs of at most
      :data:`IM2COL_MAX_OUTPUT_PIXELS` pixels (input channels >= 8), else (the RGB stems,
      stride-1 convs on larger maps) :func:`conv_matmul_kernel_grad`: the library conv with
      per-tap matmuls for its kernel gradient;
    * grouped with more than one channel per group: a dense conv with
      :func:`block_diagonal_kernel` (through the rule above) for at most
      :data:`BLOCK_DIAGONAL_MAX_GROUPS` groups, else :func:`grouped_conv_im2col`;
    * depthwise (one channel per group) and everything else: the library conv (the
      conv-first blocks run depthwise convs as :func:`depthwise_conv_shift_add` themselves).
    """
    impl = _CONV_IMPL.get()
    eligible = (use_cpu_paths(impl, "im2col") and lhs.ndim == 4
                and all(d == 1 for d in (lhs_dilation or (1, 1)))
                and all(d == 1 for d in (rhs_dilation or (1, 1)))
                and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
                == _NHWC_HWIO
                and (padding == "VALID" or not isinstance(padding, str))
                and kwargs.get("out_sharding") is None
                and kwargs.get("preferred_element_type") is None)
    if eligible:
        pad = ((0, 0), (0, 0)) if padding == "VALID" else tuple(tuple(p) for p in padding)
        strides = tuple(int(s) for s in window_strides)
        groups = int(feature_group_count)
        if groups > 1 and rhs.shape[2] > 1:
            if groups > BLOCK_DIAGONAL_MAX_GROUPS:
                return grouped_conv_im2col(lhs, rhs, strides, pad)
            rhs, groups = block_diagonal_kernel(rhs, groups), 1
            feature_group_count = 1
        if groups == 1 and (impl == "im2col" or (
                rhs.shape[2] >= 8 and (max(strides) > 1 or _output_pixels(
                    lhs.shape, rhs.shape, strides, pad) <= IM2COL_MAX_OUTPUT_PIXELS))):
            return conv_im2col(lhs, rhs, strides, pad)
        if groups == 1:
            return conv_matmul_kernel_grad(lhs, rhs, strides, pad)
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)


def dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                preferred_element_type=None, **kwargs) -> Array:
    """``lax.dot_general`` for ``nnx.Linear(dot_general=)``, with a CPU fast path.

    On the CPU paths (:func:`conv_impl` "auto" on the CPU, or "im2col"), a dense layer on an
    N-d input (contracting its last axis with the kernel's first, no batch axes) runs as a
    2-d ``(N * H * W, C_in) x (C_in, C_out)`` dot between two reshapes: the same products
    and sums. Autodiff of the N-d dot gives a kernel gradient contracting three axes, which
    XLA's CPU backend lays out as an elementwise loop writing the cotangent transposed (about
    7x slower than a copy) ahead of the dot; the 2-d form contracts one major axis with no
    transpose: a conv-first block's 1x1 layers forward + backward 25.5 -> 6.4 ms (batch 64,
    16x16, 32 -> 128 channels, 2 cores).
    """
    (lc, rc), (lb, rb) = dimension_numbers
    if (lhs.ndim > 2 and rhs.ndim == 2 and tuple(lc) == (lhs.ndim - 1,) and tuple(rc) == (0,)
            and not lb and not rb and kwargs.get("out_sharding") is None
            and use_cpu_paths(_CONV_IMPL.get(), "im2col")):
        y = jax.lax.dot_general(lhs.reshape(-1, lhs.shape[-1]), rhs, (((1,), (0,)), ((), ())),
                                precision=precision,
                                preferred_element_type=preferred_element_type)
        return y.reshape(*lhs.shape[:-1], rhs.shape[1])
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type, **kwargs)


def max_pool(x: Array, window: tuple[int, int], *, strides: tuple[int, int],
             padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    """NHWC max pool with ``-inf`` padding: ``nnx.max_pool``'s values and gradient.

    On the CPU it runs as :func:`max_pool_shifted` (the max of the k*k strided slices);
    elsewhere, and under ``conv_impl("conv")`` (the library ops), ``nnx.max_pool``
    (``lax.reduce_window``); ``conv_impl("im2col")`` forces the slice form. XLA's CPU
    gradient of the ``reduce_window`` max is a variadic reduce-window carrying four int32
    index maps of the padded input (about a fifth of ResNet-18's train step in a profile at batch 64, 64 px on
    2 cores); the slice form made that step 1.08x faster (165 -> 179 images/s).
    """
    if use_cpu_paths(_CONV_IMPL.get(), "im2col"):
        return max_pool_shifted(x, tuple(window), tuple(strides),
                                tuple(tuple(p) for p in padding))
    return nnx.max_pool(x, window, strides=strides, padding=padding)


def _pool_taps(xp: Array, window, strides, out_hw) -> list[Array]:
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    return [xp[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw, :]
            for dy in range(kh) for dx in range(kw)]


def _pool_pad(x: Array, padding) -> Array:
    (pt, pb), (pl, pr) = padding
    return jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=-jnp.inf)


def _pool_out_hw(xp_shape, window, strides) -> tuple[int, int]:
    return ((xp_shape[1] - window[0]) // strides[0] + 1,
            (xp_shape[2] - window[1]) // strides[1] + 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool_shifted(x: Array, window: tuple[int, int], strides: tuple[int, int],
                     padding: tuple[tuple[int, int], tuple[int, int]]) -> Array:
    """Max pool as the elementwise max of the k*k strided slices of the ``-inf``-padded input.

    The gradient goes, per output, to the first maximal element of its window in row-major
    order (as XLA's ``select_and_scatter`` / ``reduce_window`` max gradient, and PyTorch's
    ``max_pool2d``), written as one masked strided scatter (an interior-padded ``lax.pad``)
    per tap.
    """
    xp = _pool_pad(x, padding)
    taps = _pool_taps(xp, window, strides, _pool_out_hw(xp.shape, window, strides))
    out = taps[0]
    for t in taps[1:]:
        out = jnp.maximum(out, t)
    return out


def _max_pool_fwd(x, window, strides, padding):
    out = max_pool_shifted(x, window, strides, padding)
    return out, (x, out)


def _max_pool_bwd(window, strides, padding, res, g):
    x, out = res
    xp = _pool_pad(x, padding)
    ho, wo = out.shape[1], out.shape[2]
    kw, (sh, sw) = window[1], strides
    hp, wp = xp.shape[1], xp.shape[2]
    zero = jnp.zeros((), g.dtype)
    taken = jnp.zeros(out.shape, bool)
    dxp = jnp.zeros(xp.shape, g.dtype)
    for i, t in enumerate(_pool_taps(xp, window, strides, (ho, wo))):
        dy, dx = divmod(i, kw)
        hit = (t == out) & ~taken
        taken = taken | hit
        dxp = dxp + jax.lax.pad(
            jnp.where(hit, g, zero), zero,
            ((0, 0, 0), (dy, hp - dy - sh * (ho - 1) - 1, sh - 1),
             (dx, wp - dx - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)))
    (pt, _), (pl, _) = padding
    return (dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2], :],)


max_pool_shifted.defvjp(_max_pool_fwd, _max_pool_bwd)
