"""BatchNorm folding: whole networks as BN-free inference weights.

In eval mode a BatchNorm is the per-channel affine map ``y * s + t`` with
``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s``
(:func:`convfirst_jax.models.norms.fold_bn`). A BN that follows a conv or a 1x1 (Lavin
2024, Sec. 3: ConvFirst has BN after the conv, the expand and the project) folds into that
layer's weights (output channels scaled by ``s``) and bias; each block does this itself
(:meth:`ConvFirstBlock.kernel_params`, the fused kernel's params format with
``norm="affine"``). A BN that *precedes* a VALID-padded conv (the downsample) or a Linear (the
head) folds into it too: input channels scaled by ``s``, bias += sum(W * t).

Public API:
  * :func:`fold_batchnorm` -- a whole BatchNorm four-stage network (ConvFirstNet) as
    :class:`FoldedConvFirstNet`; :func:`apply_folded` runs it (XLA or the fused kernel).
  * :func:`fold_resnet_batchnorm` -- a ResNet with each BN folded into the conv before it.
  Both equal the model in eval mode.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from convfirst_jax.models.blocks import check_block_impl
from convfirst_jax.models.layers import check_image_input
from convfirst_jax.models.norms import fold_bn
from convfirst_jax.models.macro import FourStageNet
from convfirst_jax.models.resnet import ResNet
from convfirst_jax.specs import FourStageNetSpec
from pallas_kernels import conv_first_block, conv_first_block_reference

Array = jax.Array
_HI = jax.lax.Precision.HIGHEST


def _bias_or_zeros(layer, features: int, dtype) -> Array:
    b = getattr(layer, "bias", None)
    return jnp.asarray(b[...]) if b is not None else jnp.zeros((features,), dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FoldedConvFirstNet:
    """A ConvFirstNet with every BatchNorm folded away (a pytree; ``spec`` is static).

    ``params``: ``{"stem": {"w", "b"}, "stages": [{"downsample": {"w", "b"} | None,
    "blocks": [kernel params, ...]}, ...], "head": {"w", "b"}}``.
    """

    params: dict
    spec: FourStageNetSpec = dataclasses.field(metadata=dict(static=True))


def _fold_into_next_conv(bn, conv) -> dict[str, Array]:
    """BN followed by a VALID conv: ``conv(x*s+t) == conv_{W*s}(x) + (b + sum W*t)``."""
    s, t = fold_bn(bn)
    w = conv.kernel[...]
    b = _bias_or_zeros(conv, w.shape[-1], w.dtype)
    return dict(w=w * s[None, None, :, None],
                b=b + jnp.einsum("hwio,i->o", w, t, precision=_HI))


def fold_batchnorm(model) -> FoldedConvFirstNet:
    """Fold every BatchNorm of a ConvFirstNet into its neighbouring conv/linear weights.

    ``apply_folded(fold_batchnorm(model), x)`` equals ``model(x)`` in eval mode.
    """
    if not isinstance(model, FourStageNet) or model.spec.norm != "batchnorm":
        what = (f"a {model.spec.norm} network ({model.spec.name})"
                if isinstance(model, FourStageNet) else type(model).__name__)
        raise ValueError(
            f"fold_batchnorm expects a ConvFirstNet (create_model('convfirst_...')), got "
            f"{what}; ConvNeXt has no BatchNorm to fold, a ResNet folds with "
            f"fold_resnet_batchnorm")
    s, t = fold_bn(model.stem.norm)
    w = model.stem.conv.kernel[...]
    stem = dict(w=w * s, b=_bias_or_zeros(model.stem.conv, w.shape[-1], w.dtype) * s + t)
    stages = []
    for stage in model.stages:
        ds = None
        if stage.downsample is not None:
            ds = _fold_into_next_conv(stage.downsample.norm, stage.downsample.conv)
        stages.append(dict(downsample=ds,
                           blocks=[b.kernel_params() for b in stage.blocks]))
    s, t = fold_bn(model.head.norm)
    w, b = model.head.fc.kernel[...], model.head.fc.bias[...]
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
    check_block_impl(block_impl)
    spec = folded.spec
    check_image_input(x, min_resolution=32, model_name=spec.name)
    p = folded.params
    x = _patchify(x, p["stem"], spec.stem_size)
    for i, stage in enumerate(p["stages"]):
        if stage["downsample"] is not None:
            x = _patchify(x, stage["downsample"], 2)
        kw = spec.block_config(i).kernel_options()
        for bp in stage["blocks"]:
            if block_impl == "pallas":
                x = conv_first_block(x, bp, **kw)
            else:
                x = conv_first_block_reference(x, bp, intermediate_dtype=x.dtype, **kw)
    feats = x.astype(jnp.float32).mean(axis=(1, 2))
    return jnp.dot(feats, p["head"]["w"].astype(jnp.float32), precision=_HI) + p["head"]["b"]


class _ChannelBias(nnx.Module):
    """``x + b`` per channel: what is left of a BatchNorm folded into the conv before it."""

    def __init__(self, bias: jax.Array):
        self.bias = nnx.Param(bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.bias[...].astype(x.dtype)


def _fold_conv_bn(conv: nnx.Conv, bn) -> _ChannelBias:
    """Scale ``conv``'s output channels by the BN scale in place; return the BN's shift."""
    s, t = fold_bn(bn)
    kernel = conv.kernel[...]
    conv.kernel.set_value((kernel * s.astype(kernel.dtype)).astype(kernel.dtype))
    return _ChannelBias(t.astype(kernel.dtype))


def fold_resnet_batchnorm(model) -> nnx.Module:
    """A copy of a ResNet with every BatchNorm folded into the conv before it (eval mode).

    ``conv(x) -> bn`` becomes ``conv_{W*s}(x) + t`` with ``s = gamma / sqrt(var + eps)``,
    ``t = beta - mean * s`` (running statistics); equals ``model`` in eval mode.
    """
    if not isinstance(model, ResNet):
        raise ValueError(f"fold_resnet_batchnorm expects a ResNet, got {type(model).__name__}")
    folded = nnx.clone(model)
    folded.eval()
    folded.bn1 = _fold_conv_bn(folded.conv1, folded.bn1)
    for layer in folded.layers:
        for block in layer:
            for k in (1, 2, 3):
                if hasattr(block, f"conv{k}"):
                    setattr(block, f"bn{k}", _fold_conv_bn(getattr(block, f"conv{k}"),
                                                           getattr(block, f"bn{k}")))
            if block.downsample is not None:
                block.downsample.bn = _fold_conv_bn(block.downsample.conv, block.downsample.bn)
    return folded
