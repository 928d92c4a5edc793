"""Small building blocks shared by every model: activations, norms, drop path, input checks.

Initialisers follow timm: ``trunc_normal(std=.02)`` for ConvNeXt/ConvFirst convs and linears,
Kaiming-normal (fan_out) for ResNet convs, zero biases (Liu et al. 2022, Sec. 2; He et al. 2015).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array

def _host_drawn(jax_init: Callable, draw: Callable[[np.random.Generator, tuple], np.ndarray]):
    """An initializer that draws on the host with numpy when the key is concrete.

    Eager ``jax.random`` initialisers compile one XLA program per distinct parameter shape
    (about 0.25 s each on a CPU: ~15 s for a small ConvNeXt); a numpy draw seeded from the
    key's bits costs nothing and is just as deterministic. Under a trace (``nnx.eval_shape``,
    ``nnx.jit``) the key is abstract, so the jax initialiser is used instead.
    """
    def init(key, shape, dtype=jnp.float32):
        key_bits = jax.random.key_data(key)
        if isinstance(key_bits, jax.core.Tracer):   # inside a trace: stay in jax
            return jax_init(key, shape, dtype)
        bits = np.asarray(key_bits).astype(np.uint64).ravel()
        rng = np.random.default_rng([int(b) for b in bits])
        return jnp.asarray(draw(rng, tuple(int(s) for s in shape)), dtype=dtype)
    return init


def _trunc_normal_draw(stddev: float):
    def draw(rng: np.random.Generator, shape: tuple) -> np.ndarray:
        z = rng.standard_normal(shape)
        bad = np.abs(z) > 2.0
        while bad.any():                       # resample outside +-2 std (truncated normal)
            z[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(z) > 2.0
        return z * stddev
    return draw


def _kaiming_fan_out_draw(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    fan_out = shape[-1] * int(np.prod(shape[:-2])) if len(shape) > 2 else shape[-1]
    return rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)


#: timm's ``trunc_normal_(std=.02)`` (truncated at +-2 std, which timm's absolute +-2 never hits).
TRUNC_NORMAL_02 = _host_drawn(nnx.initializers.truncated_normal(stddev=0.02),
                              _trunc_normal_draw(0.02))
#: timm ResNet: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``.
KAIMING_FAN_OUT = _host_drawn(nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
                              _kaiming_fan_out_draw)

#: PyTorch BatchNorm momentum 0.1 == flax momentum 0.9 (flax keeps 0.9 of the old value).
BN_MOMENTUM = 0.9


class BatchNorm(nnx.BatchNorm):
    """Channel-last BatchNorm (Ioffe & Szegedy 2015) with PyTorch semantics.

    Same variables as ``nnx.BatchNorm`` (``scale``, ``bias`` params; ``mean``, ``var`` batch
    stats), so folding, checkpoints and ``model.train()/eval()`` work unchanged. Differences:
    statistics and normalisation are computed in float32 (then cast to ``dtype``); as in
    ``torch.nn.BatchNorm2d``, a training step normalises with the exact two-pass *biased*
    batch variance but folds the *unbiased* one (times n / (n - 1), n = N * H * W values per
    channel) into the running variance; and the running averages are written with
    ``Variable.set_value``: flax 0.12's ``var[...] = v`` probes ``tracer.sharding``, whose
    error message JAX builds by scanning the whole trace, which made tracing a ConvFirst
    train step quadratic in depth (~100 BNs: seconds -> tens of seconds). On the CPU paths
    (:func:`use_norm_gradients`) a training step's gradient is written out
    (:func:`batch_norm_train`).
    """

    def __call__(self, x: Array) -> Array:
        axes = tuple(range(x.ndim - 1))
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        elif use_norm_gradients():
            scale = self.scale[...] if self.scale is not None else None
            bias = self.bias[...] if self.bias is not None else None
            y, mean, var = batch_norm_train(xf, scale, bias, self.epsilon)
            self._update_running(mean, var, x.shape)
            return y.astype(self.dtype or x.dtype)
        else:
            mean = xf.mean(axes)
            var = jnp.square(xf - mean).mean(axes)
            self._update_running(mean, var, x.shape)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.scale is not None:
            y = y * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(self.dtype or x.dtype)

    def _update_running(self, mean: Array, var: Array, shape: tuple[int, ...]) -> None:
        n = math.prod(shape[:-1])
        unbiased = var * (n / (n - 1)) if n > 1 else var  # PyTorch's running estimate
        m = self.momentum
        self.mean.set_value(jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean))
        self.var.set_value(jax.lax.stop_gradient(m * self.var[...] + (1 - m) * unbiased))


def batch_norm_train(x: Array, scale: Array | None, bias: Array | None, eps: float
                     ) -> tuple[Array, Array, Array]:
    """Training-mode BatchNorm over every axis but the last: ``(y, mean, var)``.

    ``y = (x - mean) * rsqrt(var + eps) * scale + bias`` with the batch mean and the exact
    two-pass biased variance (the values of :class:`BatchNorm`'s forward), differentiable in
    ``x``, ``scale``, ``bias`` (and through ``mean`` and ``var``). The gradient is written out
    (Ioffe & Szegedy 2015, Sec. 3): with ``xc = x - mean``, ``r = rsqrt(var + eps)``,
    ``S_g = sum g`` and ``S_gx = sum g * xc`` per channel over the n rows,
    ``dx = (r * scale) * g + xc * (2 g_var / n - scale * r^3 * S_gx / n)
    + (g_mean - r * scale * S_g) / n``, ``dscale = r * S_gx``, ``dbias = S_g``: two channel
    reductions and one elementwise pass. XLA:CPU's autodiff of the forward made more full
    passes over ``x`` and ``g``; the BatchNorm models' CPU train steps got faster with this
    form (``python -m convfirst_jax.bench train-compare``).
    """
    c = x.shape[-1]
    s = jnp.ones((c,), x.dtype) if scale is None else scale.astype(x.dtype)
    b = jnp.zeros((c,), x.dtype) if bias is None else bias.astype(x.dtype)
    y, mean, var = _batch_norm(x, s, b, float(eps))
    return y, mean, var


def _bn_forward(x: Array, scale: Array, bias: Array, eps: float):
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    xc = x - mean
    var = jnp.square(xc).mean(axes)
    r = jax.lax.rsqrt(var + eps)
    y = xc * r * scale + bias
    return y, mean, var, r


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _batch_norm(x: Array, scale: Array, bias: Array, eps: float):
    y, mean, var, _ = _bn_forward(x, scale, bias, eps)
    return y, mean, var


def _batch_norm_fwd(x, scale, bias, eps):
    y, mean, var, r = _bn_forward(x, scale, bias, eps)
    return (y, mean, var), (x, scale, mean, r)


def _batch_norm_bwd(eps, res, cts):
    x, scale, mean, r = res
    g, g_mean, g_var = cts
    axes = tuple(range(x.ndim - 1))
    n = math.prod(x.shape[:-1])
    xc = x - mean
    s_g = g.sum(axes)
    s_gx = (g * xc).sum(axes)
    a = r * scale
    k1 = (2.0 * g_var - a * r * r * s_gx) / n
    k0 = (g_mean - a * s_g) / n
    dx = g * a + xc * k1 + k0
    return dx, r * s_gx, s_g


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def fold_bn(bn: nnx.BatchNorm) -> tuple[Array, Array]:
    """Inference affine of a BatchNorm: ``(s, t)`` with ``bn(y) == y * s + t`` in eval mode.

    ``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s`` from the running statistics
    (what eval mode uses), whatever mode the layer is in (Lavin 2024, Sec. 3: every ConvFirst
    BatchNorm folds into the conv or 1x1 next to it for inference).
    """
    mean, var = jnp.asarray(bn.mean[...]), jnp.asarray(bn.var[...])
    gamma = jnp.asarray(bn.scale[...]) if bn.scale is not None else jnp.ones_like(mean)
    beta = jnp.asarray(bn.bias[...]) if bn.bias is not None else jnp.zeros_like(mean)
    s = gamma * jax.lax.rsqrt(var + bn.epsilon)
    return s, beta - mean * s


class LayerNorm(nnx.LayerNorm):
    """``nnx.LayerNorm`` (same variables and values) whose gradient over the last axis is
    written out (:func:`layer_norm`) on the CPU paths (:func:`use_norm_gradients`).

    Only the plain case takes it: float32 or float64 input, parameters and compute dtype all
    that one dtype, normalised and scaled over the last axis, exact two-pass variance, no
    mask or named axis; anything else is ``nnx.LayerNorm`` itself.
    """

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        plain = (mask is None and self.axis_name is None and not self.use_fast_variance
                 and self.reduction_axes in (-1, (-1,)) and self.feature_axes in (-1, (-1,))
                 and x.dtype in (jnp.float32, jnp.float64)
                 and self.dtype in (None, x.dtype) and self.param_dtype == x.dtype)
        if not (plain and use_norm_gradients()):
            return super().__call__(x, mask=mask)
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        return layer_norm(x, scale, bias, self.epsilon)


def layer_norm(x: Array, scale: Array | None, bias: Array | None, eps: float) -> Array:
    """LayerNorm over the last axis (Ba et al. 2016) with a written-out gradient.

    ``y = (x - mean) * (rsqrt(var + eps) * scale) + bias``, mean and exact two-pass variance
    over the last axis (``nnx.LayerNorm(use_fast_variance=False)``'s values). Gradient, with
    ``xhat = (x - mean) * r``, ``r = rsqrt(var + eps)``, ``gh = g * scale`` and means over the
    C features of a row: ``dx = r * (gh - mean(gh) - xhat * mean(gh * xhat))``,
    ``dscale = sum over rows of g * xhat``, ``dbias = sum over rows of g``.
    """
    c = x.shape[-1]
    s = jnp.ones((c,), x.dtype) if scale is None else scale.astype(x.dtype)
    b = jnp.zeros((c,), x.dtype) if bias is None else bias.astype(x.dtype)
    return _layer_norm(x, s, b, float(eps))


def _ln_forward(x: Array, scale: Array, bias: Array, eps: float):
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    var = jnp.square(xc).mean(-1, keepdims=True)
    r = jax.lax.rsqrt(var + eps)
    return xc * (r * scale) + bias, r


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x: Array, scale: Array, bias: Array, eps: float) -> Array:
    return _ln_forward(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    y, r = _ln_forward(x, scale, bias, eps)
    return y, (x, scale, r)


def _layer_norm_bwd(eps, res, g):
    x, scale, r = res
    xhat = (x - x.mean(-1, keepdims=True)) * r
    gh = g * scale
    dx = r * (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True))
    rows = tuple(range(x.ndim - 1))
    return dx, (g * xhat).sum(rows), g.sum(rows)


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


def make_norm(kind: str, features: int, *, eps: float, dtype, param_dtype,
              rngs: nnx.Rngs, scale_init=nnx.initializers.ones) -> nnx.Module:
    """Channel-last norm layer: "layernorm" (per pixel, over C) or "batchnorm" (over N, H, W).

    Both use the exact two-pass variance (``use_fast_variance=False``) like PyTorch, so the
    numbers match timm's ``LayerNorm``/``BatchNorm2d`` rather than the E[x^2]-E[x]^2 shortcut.
    """
    if kind == "layernorm":
        return LayerNorm(features, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
                         use_fast_variance=False, rngs=rngs)
    if kind == "batchnorm":
        return BatchNorm(features, epsilon=eps, momentum=BN_MOMENTUM, dtype=dtype,
                             param_dtype=param_dtype, use_fast_variance=False,
                             scale_init=scale_init, rngs=rngs)
    raise ValueError(f"unknown norm {kind!r}; valid: layernorm, batchnorm")


class DropPath(nnx.Module):
    """Stochastic depth (Huang et al. 2016), per sample, as timm's ``drop_path``.

    Instead of masking a tensor it returns the per-sample branch multiplier
    ``keep_mask / keep_prob`` of shape (N,), or ``None`` when inactive (eval mode or rate 0),
    so the same draw can scale an XLA branch or be handed to the fused kernel as
    ``branch_scale``. ``model.train()`` / ``model.eval()`` toggle ``deterministic``.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs, deterministic: bool = False):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.deterministic = deterministic
        # Always fork, so the parameter init stream never depends on the drop path rate.
        self.rngs = rngs["dropout"].fork()

    def __call__(self, batch: int) -> Array | None:
        if self.deterministic or self.rate == 0.0:
            return None
        keep_prob = 1.0 - self.rate
        # Draw like ``RngStream.__call__`` but update the counter with ``set_value`` (see
        # BatchNorm: ``count[...] += 1`` makes tracing quadratic in depth on flax 0.12).
        stream = self.rngs
        key = jax.random.fold_in(stream.key[...], stream.count[...])
        stream.count.set_value(stream.count[...] + 1)
        keep = jax.random.bernoulli(key, keep_prob, (batch,))
        return keep.astype(jnp.float32) / keep_prob

    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view``: ``deterministic=True`` disables the drop."""
        if deterministic is not None:
            self.deterministic = deterministic


def scale_branch(z: Array, scale: Array | None) -> Array:
    """Multiply an NHWC branch by the per-sample drop path multiplier (no-op for ``None``)."""
    if scale is None:
        return z
    return z * scale.astype(z.dtype)[:, None, None, None]


def drop_path_rates(rate: float, depths: tuple[int, ...]) -> list[list[float]]:
    """timm's linearly increasing stochastic depth: ``linspace(0, rate, sum(depths))`` per stage."""
    total = sum(depths)
    flat = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    out, start = [], 0
    for d in depths:
        out.append(flat[start:start + d])
        start += d
    return out


def check_image_input(x, *, min_resolution: int, model_name: str) -> None:
    """Raise one ValueError unless ``x`` is an (N, H, W, 3) floating NHWC batch of H, W >= min."""
    shape = tuple(getattr(x, "shape", ()))
    dtype = getattr(x, "dtype", None)
    floating = dtype is not None and jnp.issubdtype(dtype, jnp.floating)
    if len(shape) != 4 or shape[-1] != 3 or not floating:
        hint = ""
        if len(shape) == 4 and shape[1] == 3 and shape[-1] != 3:
            hint = "; transpose NCHW with x.transpose(0, 2, 3, 1)"
        elif len(shape) == 3:
            hint = "; add a batch axis with x[None]"
        elif not floating and len(shape) == 4:
            hint = "; convert with x.astype(jnp.float32) (and normalise)"
        raise ValueError(
            f"{model_name}: expected NHWC (N, H, W, 3) floating input, got shape {shape} "
            f"{dtype}{hint}")
    h, w = shape[1], shape[2]
    if h < min_resolution or w < min_resolution:
        raise ValueError(
            f"{model_name}: input resolution {h}x{w} is too small; the network downsamples "
            f"by 32, so H and W must be >= {min_resolution}")


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
    output has at most :data:`IM2COL_MAX_OUTPUT_PIXELS` pixels, ``lax.conv_general_dilated``
    otherwise and on every other backend; "conv": always the library conv; "im2col": always
    :func:`conv_im2col` where it applies (ungrouped, undilated, NHWC/HWIO, explicit padding).
    Both compute the same sums (float rounding aside). ResNet's max pool follows the same
    choice (:func:`max_pool`: strided slices where im2col would be used, else the library op),
    and so do the norms' written-out gradients (:func:`use_norm_gradients`).
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
      :data:`IM2COL_MAX_OUTPUT_PIXELS` pixels (input channels >= 8; the RGB stems stay on
      the library conv), else the library conv;
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
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision, **kwargs)


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
