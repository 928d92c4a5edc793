"""Channel-last norm layers with PyTorch semantics: BatchNorm and LayerNorm.

The layers (:class:`BatchNorm`, :class:`LayerNorm`, built by :func:`make_norm`), their
training forms with written-out gradients (:func:`batch_norm_train`, :func:`layer_norm`,
taken on the CPU paths: :func:`convfirst_jax.models.cpu_paths.use_norm_gradients`) and the
inference affine of a BatchNorm (:func:`fold_bn`).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from convfirst_jax.models.cpu_paths import use_norm_gradients

Array = jax.Array

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


def _feature_mean(x: Array) -> Array:
    """Mean over the last axis, keepdims, as a matmul with a (C, 1) column of 1/C.

    The same sum as ``x.mean(-1, keepdims=True)`` up to rounding (float32 tests against the
    float64 reference are unchanged). As a reduction, XLA:CPU put the mean in a YNNPACK
    reduce fusion together with its elementwise producer, ConvNeXt's 7 x 7 shift-add; that
    fusion takes its inputs materialised, so in the compiled ConvNeXt-atto train step each
    7 x 7 layer of the 16 x 16 and 8 x 8 stages wrote 22 tap slices and 22 broadcast weights
    as full-size arrays (seen in the optimised HLO; not in a lone block, so the fusion choice
    is the whole program's). As a dot, none: the step 1.01-1.21x faster in every one of 10
    interleaved rounds (``docs/results/cpu-imagenette-64px/ab_layer_norm_stats.md``).
    """
    c = x.shape[-1]
    return jnp.dot(x, jnp.full((c, 1), 1.0 / c, x.dtype), precision=jax.lax.Precision.HIGHEST)


def _ln_forward(x: Array, scale: Array, bias: Array, eps: float):
    mean = _feature_mean(x)
    xc = x - mean
    var = _feature_mean(jnp.square(xc))
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
