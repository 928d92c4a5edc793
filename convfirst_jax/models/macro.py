"""The four-stage macro design shared by ConvNeXt and ConvFirstNet (Liu et al. 2022, Fig. 2).

    stem:   k x k conv, stride k ("patchify", k = 4) -> norm
    stages: [norm -> 2x2 stride-2 conv] (stages 1..3) -> depth_i conv-first blocks
    head:   global average pool -> norm -> Linear

The spec carries every choice: ConvNeXt is LayerNorm (eps 1e-6, biased stem conv), ConvFirstNet
BatchNorm (eps 1e-5, bias-free stem conv since BN follows). Module paths mirror timm:
``stem.conv``, ``stem.norm``, ``stages.{i}.downsample.{norm,conv}``,
``stages.{i}.blocks.{j}.{conv_dw,norm,fc1,fc1_norm,fc2,fc2_norm,gamma}``, ``head.{norm,fc}``.

* ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"), numerically as timm's convnext.py:
  7x7 depthwise conv (bias) -> LayerNorm (eps 1e-6) -> Linear 4C -> exact GELU -> Linear C ->
  layer scale (init 1e-6) -> drop path -> + input; LN patchify stem, LN + 2x2/2 downsampling,
  pool -> LN -> Linear head. ConvNeXt-T: 28,589,128 params at 1000 classes.
* ConvFirstNet (Lavin 2024, arXiv 2404.03617, Sec. 3): the same macro with BatchNorm. Blocks:
  k x k depthwise (or group width 8) conv -> BN -> 1x1 expand -> BN -> SiLU -> 1x1 project ->
  BN (gamma zero-initialised: each block starts as the identity) -> drop path -> + input; no
  conv/1x1 biases since BN follows. Every BN folds away for inference
  (:func:`convfirst_jax.folding.fold_batchnorm`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from convfirst_jax.models.blocks import ConvFirstBlock, check_block_impl
from convfirst_jax.models.cpu_paths import conv_general_dilated
from convfirst_jax.models.layers import TRUNC_NORMAL_02, check_image_input, drop_path_rates
from convfirst_jax.models.norms import make_norm
from convfirst_jax.specs import FourStageNetSpec

MIN_RESOLUTION = 32


class Stem(nnx.Module):
    """Patchify stem: ``stem_size`` x ``stem_size`` conv with the same stride, then a norm."""

    def __init__(self, spec: FourStageNetSpec, *, dtype, param_dtype, rngs: nnx.Rngs):
        k = spec.stem_size
        self.conv = nnx.Conv(3, spec.dims[0], (k, k), strides=(k, k), padding="VALID",
                             use_bias=spec.stem_bias, kernel_init=TRUNC_NORMAL_02,
                             dtype=dtype, param_dtype=param_dtype,
                             conv_general_dilated=conv_general_dilated, rngs=rngs)
        self.norm = make_norm(spec.norm, spec.dims[0], eps=spec.norm_eps, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.conv(x))


class Downsample(nnx.Module):
    """Between stages: norm, then a 2x2 stride-2 conv (with bias) to the next width."""

    def __init__(self, spec: FourStageNetSpec, stage: int, *, dtype, param_dtype,
                 rngs: nnx.Rngs):
        cin, cout = spec.dims[stage - 1], spec.dims[stage]
        self.norm = make_norm(spec.norm, cin, eps=spec.norm_eps, dtype=dtype,
                              param_dtype=param_dtype, rngs=rngs)
        self.conv = nnx.Conv(cin, cout, (2, 2), strides=(2, 2), padding="VALID",
                             kernel_init=TRUNC_NORMAL_02, dtype=dtype, param_dtype=param_dtype,
                             conv_general_dilated=conv_general_dilated, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(self.norm(x))


class Stage(nnx.Module):
    """Optional downsample followed by ``depths[stage]`` conv-first blocks."""

    def __init__(self, spec: FourStageNetSpec, stage: int, *, drop_path: list[float],
                 block_impl: str, dtype, param_dtype, rngs: nnx.Rngs):
        self.downsample = (Downsample(spec, stage, dtype=dtype, param_dtype=param_dtype,
                                      rngs=rngs) if stage > 0 else None)
        cfg = spec.block_config(stage)
        self.blocks = nnx.List([
            ConvFirstBlock(cfg, drop_path=dp, block_impl=block_impl, dtype=dtype,
                           param_dtype=param_dtype, rngs=rngs) for dp in drop_path])

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class Head(nnx.Module):
    """Global average pool -> norm -> Linear, computed in float32 (logits are float32)."""

    def __init__(self, spec: FourStageNetSpec, num_classes: int, *, param_dtype,
                 rngs: nnx.Rngs):
        c = spec.dims[-1]
        self.norm = make_norm(spec.norm, c, eps=spec.norm_eps, dtype=jnp.float32,
                              param_dtype=param_dtype, rngs=rngs)
        self.fc = nnx.Linear(c, num_classes, kernel_init=TRUNC_NORMAL_02, dtype=jnp.float32,
                             param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        feats = x.astype(jnp.float32).mean(axis=(1, 2))
        return self.fc(self.norm(feats))


class FourStageNet(nnx.Module):
    """ConvNeXt or ConvFirstNet, built from a :class:`FourStageNetSpec` (module docstring).

    ``model(x)``: x is (N, H, W, 3) NHWC floating with H, W >= 32; returns (N, num_classes)
    float32 logits. ``model.train()`` / ``model.eval()`` switch BatchNorm statistics and drop
    path. ``drop_path`` is the maximum stochastic depth rate, linear over blocks (timm).
    """

    def __init__(self, spec: FourStageNetSpec, *, num_classes: int = 1000,
                 block_impl: str = "xla", dtype=jnp.float32, param_dtype=jnp.float32,
                 drop_path: float = 0.0, rngs: nnx.Rngs):
        check_block_impl(block_impl)
        self.spec = spec
        self.num_classes = num_classes
        self.block_impl = block_impl
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.stem = Stem(spec, **kw)
        rates = drop_path_rates(drop_path, spec.depths)
        self.stages = nnx.List([
            Stage(spec, i, drop_path=rates[i], block_impl=block_impl, **kw)
            for i in range(len(spec.depths))])
        self.head = Head(spec, num_classes, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_image_input(x, min_resolution=MIN_RESOLUTION, model_name=self.spec.name)
        x = self.stem(x.astype(self.dtype))
        for stage in self.stages:
            x = stage(x)
        return self.head(x)
