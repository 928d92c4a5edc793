"""BatchNorm folding: ConvFirst blocks and ConvFirstNet as BN-free inference weights.

In eval mode a BatchNorm is the per-channel affine map ``y * s + t`` with
``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``; a BN that follows a conv or a
1x1 (Lavin 2024, Sec. 3: ConvFirst has BN after the conv, the expand and the project) folds
into that layer's weights (output channels scaled by ``s``) and bias. A BN that *precedes* a
VALID-padded conv (the downsample) or a Linear (the head) folds into it too: input channels
scaled by ``s``, bias += sum(W * t). The result is the fused kernel's params format
(``pallas_kernels.conv_first_block``) with ``norm="affine"``, scale 1, shift 0.

Public API:
  * :func:`fold_bn` -- the (scale, shift) of one BatchNorm in inference.
  * :func:`fold_block_params` / :func:`block_kernel_kwargs` -- what a block hands the kernel
    (ConvFirst: BN folded; ConvNeXt: weights packed, LayerNorm kept).
  * :func:`fold_batchnorm` -- a whole ConvFirstNet as :class:`FoldedConvFirstNet`;
    :func:`apply_folded` runs it (XLA or the fused kernel). Equals the model in eval mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from convfirst_jax.specs import ConvFirstBlockConfig, ConvFirstNetSpec
from pallas_kernels import conv_first_block, conv_first_block_reference

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def _value(v) -> Array:
    return jnp.asarray(v[...])


def fold_bn(bn) -> tuple[Array, Array]:
    """Inference affine of an ``nnx.BatchNorm``: returns (s, t) with ``bn(y) == y * s + t``.

    Uses the running statistics (what eval mode uses), whatever mode the layer is in.
    """
    mean, var = _value(bn.mean), _value(bn.var)
    gamma = _value(bn.scale) if bn.scale is not None else jnp.ones_like(mean)
    beta = _value(bn.bias) if bn.bias is not None else jnp.zeros_like(mean)
    s = gamma * jax.lax.rsqrt(var + bn.epsilon)
    return s, beta - mean * s


def _bias_or_zeros(layer, features: int, dtype) -> Array:
    b = getattr(layer, "bias", None)
    return _value(b) if b is not None else jnp.zeros((features,), dtype)


def block_kernel_kwargs(config: ConvFirstBlockConfig) -> dict[str, Any]:
    """Static keyword arguments of ``conv_first_block`` for a block config (after folding)."""
    return dict(kernel_size=config.kernel_size,
                norm="layernorm" if config.norm == "layernorm" else "affine",
                activation=config.activation, group_width=config.group_width,
                eps=config.norm_eps)


def fold_block_params(block) -> dict[str, Array | None]:
    """Kernel params of a :class:`~convfirst_jax.models.blocks.ConvFirstBlock`.

    LayerNorm block (ConvNeXt): the weights as they are (LN gamma/beta as norm scale/shift,
    ``gamma`` as layer scale). BatchNorm block (ConvFirst): conv BN folded into conv_w/conv_b,
    expand BN into w1/b1, project BN into w2/b2, norm scale 1 / shift 0 (``norm="affine"``).
    """
    cfg: ConvFirstBlockConfig = block.config
    c, hid = cfg.channels, cfg.hidden
    conv_w = _value(block.conv_dw.kernel)
    dt = conv_w.dtype
    conv_b = _bias_or_zeros(block.conv_dw, c, dt)
    w1, b1 = _value(block.fc1.kernel), _bias_or_zeros(block.fc1, hid, dt)
    w2, b2 = _value(block.fc2.kernel), _bias_or_zeros(block.fc2, c, dt)
    layer_scale = _value(block.gamma) if block.gamma is not None else None
    if cfg.norm == "layernorm":
        return dict(conv_w=conv_w, conv_b=conv_b, norm_scale=_value(block.norm.scale),
                    norm_shift=_value(block.norm.bias), w1=w1, b1=b1, w2=w2, b2=b2,
                    layer_scale=layer_scale)
    s0, t0 = fold_bn(block.norm)
    s1, t1 = fold_bn(block.fc1_norm)
    s2, t2 = fold_bn(block.fc2_norm)
    return dict(conv_w=conv_w * s0, conv_b=conv_b * s0 + t0,
                norm_scale=jnp.ones((c,), dt), norm_shift=jnp.zeros((c,), dt),
                w1=w1 * s1, b1=b1 * s1 + t1, w2=w2 * s2, b2=b2 * s2 + t2,
                layer_scale=layer_scale)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FoldedConvFirstNet:
    """A ConvFirstNet with every BatchNorm folded away (a pytree; ``spec`` is static).

    ``params``: ``{"stem": {"w", "b"}, "stages": [{"downsample": {"w", "b"} | None,
    "blocks": [kernel params, ...]}, ...], "head": {"w", "b"}}``.
    """

    params: dict
    spec: ConvFirstNetSpec = dataclasses.field(metadata=dict(static=True))


def _fold_into_next_conv(bn, conv) -> dict[str, Array]:
    """BN followed by a VALID conv: ``conv(x*s+t) == conv_{W*s}(x) + (b + sum W*t)``."""
    s, t = fold_bn(bn)
    w = _value(conv.kernel)
    b = _bias_or_zeros(conv, w.shape[-1], w.dtype)
    return dict(w=w * s[None, None, :, None],
                b=b + jnp.einsum("hwio,i->o", w, t, precision=_HI))


def fold_batchnorm(model) -> FoldedConvFirstNet:
    """Fold every BatchNorm of a ConvFirstNet into its neighbouring conv/linear weights.

    ``apply_folded(fold_batchnorm(model), x)`` equals ``model(x)`` in eval mode.
    """
    from convfirst_jax.models.convfirst import ConvFirstNet

    if not isinstance(model, ConvFirstNet):
        raise ValueError(
            f"fold_batchnorm expects a ConvFirstNet (create_model('convfirst_...')), got "
            f"{type(model).__name__}; ConvNeXt has no BatchNorm to fold")
    s, t = fold_bn(model.stem.norm)
    w = _value(model.stem.conv.kernel)
    stem = dict(w=w * s, b=_bias_or_zeros(model.stem.conv, w.shape[-1], w.dtype) * s + t)
    stages = []
    for stage in model.stages:
        ds = None
        if stage.downsample is not None:
            ds = _fold_into_next_conv(stage.downsample.norm, stage.downsample.conv)
        stages.append(dict(downsample=ds,
                           blocks=[fold_block_params(b) for b in stage.blocks]))
    s, t = fold_bn(model.head.norm)
    w, b = _value(model.head.fc.kernel), _value(model.head.fc.bias)
    head = dict(w=s[:, None] * w, b=b + jnp.dot(t, w, precision=_HI))
    return FoldedConvFirstNet(params=dict(stem=stem, stages=stages, head=head),
                              spec=model.spec)


def _patchify(x: Array, p: dict[str, Array], stride: int) -> Array:
    y = jax.lax.conv_general_dilated(
        x, p["w"].astype(x.dtype), (stride, stride), "VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HI)
    return y + p["b"].astype(x.dtype)


def apply_folded(folded: FoldedConvFirstNet, x: Array, *, block_impl: str = "xla") -> Array:
    """Run a folded ConvFirstNet on NHWC ``x``; returns float32 logits.

    ``block_impl="pallas"`` runs each block with the fused kernel, "xla" with the kernel's
    plain-jnp reference (rounding every layer to ``x.dtype``, as the Flax layers do). Computes in ``x.dtype`` (cast the input for bf16 inference).
    """
    from convfirst_jax.models.blocks import check_block_impl
    from convfirst_jax.models.layers import check_image_input

    check_block_impl(block_impl)
    spec = folded.spec
    check_image_input(x, min_resolution=32, model_name=spec.name)
    p = folded.params
    x = _patchify(x, p["stem"], spec.stem_size)
    for i, stage in enumerate(p["stages"]):
        if stage["downsample"] is not None:
            x = _patchify(x, stage["downsample"], 2)
        kw = block_kernel_kwargs(spec.block_config(i))
        for bp in stage["blocks"]:
            if block_impl == "pallas":
                x = conv_first_block(x, bp, **kw)
            else:
                x = conv_first_block_reference(x, bp, intermediate_dtype=x.dtype, **kw)
    feats = x.astype(jnp.float32).mean(axis=(1, 2))
    return jnp.dot(feats, p["head"]["w"].astype(jnp.float32), precision=_HI) + p["head"]["b"]
