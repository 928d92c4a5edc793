"""The conv-first block: one module for both ConvFirst and ConvNeXt residual blocks.

Lavin 2024 (arXiv 2404.03617), Sec. 3 "ConvFirst block"; Liu et al. 2022, Fig. 4 (ConvNeXt)::

    y   = conv_kxk(x, groups = C / group_width) + b0      # conv_dw
    y   = norm(y)                                         # norm  (BN or per-pixel LN)
    h   = act(norm?(y @ W1 + b1))                         # fc1 (+ fc1_norm: ConvFirst BN)
    z   = norm?(h @ W2 + b2)                              # fc2 (+ fc2_norm: ConvFirst BN)
    out = x + drop_path(layer_scale * z)                  # gamma: ConvNeXt layer scale

With ``norm="layernorm"``, LN eps 1e-6, exact GELU, biases and layer scale this is exactly
timm's ``ConvNeXtBlock`` (``conv_mlp=False``). ``block_impl="pallas"`` runs the whole block as
one fused kernel (``pallas_kernels.conv_first_block``): LayerNorm blocks always (train and
eval), BatchNorm blocks in eval mode with BN folded into the conv/1x1 weights; BatchNorm
blocks in train mode need batch statistics, which the kernel does not compute, so they run
the XLA layers (logged once per process).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from flax import nnx

from convfirst_jax.models.cpu_paths import (conv_general_dilated, depthwise_conv_shift_add,
                                            dot_general, use_shift_add_depthwise)
from convfirst_jax.models.layers import TRUNC_NORMAL_02, DropPath, scale_branch
from convfirst_jax.models.norms import fold_bn, make_norm
from convfirst_jax.specs import ConvFirstBlockConfig
from pallas_kernels import conv_first_block
from pallas_kernels.activations import activation_fn

logger = logging.getLogger("convfirst_jax")

BLOCK_IMPLS = ("xla", "pallas")
_LOGGED_TRAIN_FALLBACK = False


def check_block_impl(block_impl: str) -> None:
    """Raise a ValueError for anything but "xla" or "pallas"."""
    if block_impl not in BLOCK_IMPLS:
        raise ValueError(
            f"unknown block_impl {block_impl!r}; valid: {', '.join(repr(b) for b in BLOCK_IMPLS)}")


def _log_train_fallback_once() -> None:
    global _LOGGED_TRAIN_FALLBACK
    if not _LOGGED_TRAIN_FALLBACK:
        _LOGGED_TRAIN_FALLBACK = True
        logger.info(
            "block_impl='pallas': BatchNorm conv-first blocks run the XLA path in train mode "
            "(batch statistics need a reduction pass the fused kernel does not have); the "
            "fused kernel is used in eval mode with BatchNorm folded into the weights.")


class ConvFirstBlock(nnx.Module):
    """One residual conv-first block described by a :class:`ConvFirstBlockConfig`.

    Parameters (timm ConvNeXt shapes for the LN variant): ``conv_dw.kernel`` (k, k, gw, C)
    [+ ``conv_dw.bias`` (C,)], ``norm``, ``fc1.kernel`` (C, E*C) [+ bias], ``fc2.kernel``
    (E*C, C) [+ bias], ``gamma`` (C,) when the config has a layer scale. BatchNorm configs add
    ``fc1_norm`` (E*C) and ``fc2_norm`` (C).
    """

    def __init__(self, config: ConvFirstBlockConfig, *, drop_path: float = 0.0,
                 block_impl: str = "xla", dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        check_block_impl(block_impl)
        c, k = config.channels, config.kernel_size
        self.config = config
        self.block_impl = block_impl
        self.dtype = dtype
        self.conv_dw = nnx.Conv(
            c, c, (k, k), padding=((k // 2, k // 2), (k // 2, k // 2)),
            feature_group_count=c // config.group_width, use_bias=config.conv_bias,
            kernel_init=TRUNC_NORMAL_02, dtype=dtype, param_dtype=param_dtype,
            conv_general_dilated=conv_general_dilated, rngs=rngs)
        norm_kw = dict(eps=config.norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = make_norm(config.norm, c, **norm_kw)
        self.fc1 = nnx.Linear(c, config.hidden, use_bias=config.mlp_bias,
                              kernel_init=TRUNC_NORMAL_02, dtype=dtype,
                              param_dtype=param_dtype, dot_general=dot_general, rngs=rngs)
        self.fc2 = nnx.Linear(config.hidden, c, use_bias=config.mlp_bias,
                              kernel_init=TRUNC_NORMAL_02, dtype=dtype,
                              param_dtype=param_dtype, dot_general=dot_general, rngs=rngs)
        if config.norm == "batchnorm":
            self.fc1_norm = make_norm("batchnorm", config.hidden, **norm_kw)
            # Without a layer scale, zero-init the last BN gamma so each block starts as the
            # identity (Goyal et al. 2017; timm ResNet ``zero_init_last``).
            last_init = (nnx.initializers.zeros if config.layer_scale_init is None
                         else nnx.initializers.ones)
            self.fc2_norm = make_norm("batchnorm", c, scale_init=last_init, **norm_kw)
        else:
            self.fc1_norm = None
            self.fc2_norm = None
        if config.layer_scale_init is not None:
            self.gamma = nnx.Param(jnp.full((c,), config.layer_scale_init, param_dtype))
        else:
            self.gamma = None
        self.drop_path = DropPath(drop_path, rngs=rngs)

    @property
    def uses_batch_stats(self) -> bool:
        """True for a BatchNorm block in train mode (normalises with batch statistics)."""
        return self.config.norm == "batchnorm" and not self.norm.use_running_average

    def branch(self, x: jax.Array) -> jax.Array:
        """The residual branch ``layer_scale * mlp(norm(conv(x)))`` with XLA layers."""
        y = self.norm(self._conv(x))
        h = self.fc1(y)
        if self.fc1_norm is not None:
            h = self.fc1_norm(h)
        z = self.fc2(activation_fn(self.config.activation)(h))
        if self.fc2_norm is not None:
            z = self.fc2_norm(z)
        if self.gamma is not None:
            z = z * self.gamma[...].astype(z.dtype)
        return z

    def _conv(self, x: jax.Array) -> jax.Array:
        """The k x k conv; depthwise on the CPU as shifted slices (same math, much faster)."""
        if self.config.group_width == 1 and use_shift_add_depthwise():
            conv = self.conv_dw
            bias = None if conv.bias is None else conv.bias[...].astype(self.dtype)
            return depthwise_conv_shift_add(x.astype(self.dtype),
                                            conv.kernel[...].astype(self.dtype), bias)
        return self.conv_dw(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.drop_path(x.shape[0])
        if self.block_impl == "pallas":
            if not self.uses_batch_stats:
                return self._fused(x, scale)
            _log_train_fallback_once()
        return x + scale_branch(self.branch(x), scale)

    def kernel_params(self) -> dict[str, jax.Array | None]:
        """This block's parameters in the fused kernel's ``params`` format (inference form).

        LayerNorm block (ConvNeXt): the weights as they are (LN gamma/beta as norm
        scale/shift, ``gamma`` as layer scale). BatchNorm block (ConvFirst): each BN folded
        into the layer before it (:func:`fold_bn`, running statistics): conv BN into
        conv_w/conv_b, expand BN into w1/b1, project BN into w2/b2, norm scale 1 / shift 0
        (``config.kernel_options()`` then says ``norm="affine"``).
        """
        cfg = self.config
        c, hid = cfg.channels, cfg.hidden
        conv_w = self.conv_dw.kernel[...]
        dt = conv_w.dtype

        def bias(layer, features):
            return layer.bias[...] if layer.bias is not None else jnp.zeros((features,), dt)

        conv_b = bias(self.conv_dw, c)
        w1, b1 = self.fc1.kernel[...], bias(self.fc1, hid)
        w2, b2 = self.fc2.kernel[...], bias(self.fc2, c)
        layer_scale = self.gamma[...] if self.gamma is not None else None
        if cfg.norm == "layernorm":
            return dict(conv_w=conv_w, conv_b=conv_b, norm_scale=self.norm.scale[...],
                        norm_shift=self.norm.bias[...], w1=w1, b1=b1, w2=w2, b2=b2,
                        layer_scale=layer_scale)
        s0, t0 = fold_bn(self.norm)
        s1, t1 = fold_bn(self.fc1_norm)
        s2, t2 = fold_bn(self.fc2_norm)
        return dict(conv_w=conv_w * s0, conv_b=conv_b * s0 + t0,
                    norm_scale=jnp.ones((c,), dt), norm_shift=jnp.zeros((c,), dt),
                    w1=w1 * s1, b1=b1 * s1 + t1, w2=w2 * s2, b2=b2 * s2 + t2,
                    layer_scale=layer_scale)

    def _fused(self, x: jax.Array, scale: jax.Array | None) -> jax.Array:
        return conv_first_block(x, self.kernel_params(), branch_scale=scale,
                                **self.config.kernel_options())
