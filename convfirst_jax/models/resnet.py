"""ResNet-18 / ResNet-50 v1.5 (He et al. 2016; stride on the bottleneck 3x3), timm layout.

Stem 7x7/2 conv (pad 3) + BN + ReLU + 3x3/2 max pool (pad 1); four stages ``layers.{i}`` of
basic (two 3x3) or bottleneck (1x1 -> 3x3 -> 1x1 x4) blocks with a 1x1-conv + BN projection
shortcut where the shape changes; global average pool -> Linear. Kaiming-normal (fan_out)
conv init, last BN gamma of each block zero-initialised (timm ``zero_init_last``). Explicit
PyTorch-style padding, so outputs match timm at every resolution. Parameters at 1000 classes:
resnet18 11,689,512, resnet50 25,557,032.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from convfirst_jax.models.blocks import check_block_impl
from convfirst_jax.models.cpu_paths import conv_general_dilated, max_pool
from convfirst_jax.models.layers import (KAIMING_FAN_OUT, DropPath, check_image_input,
                                         drop_path_rates, scale_branch)
from convfirst_jax.models.norms import make_norm
from convfirst_jax.specs import ResNetSpec

MIN_RESOLUTION = 32


def _conv(cin: int, cout: int, k: int, stride: int, *, dtype, param_dtype,
          rngs: nnx.Rngs) -> nnx.Conv:
    p = k // 2
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding=((p, p), (p, p)),
                    use_bias=False, kernel_init=KAIMING_FAN_OUT, dtype=dtype,
                    param_dtype=param_dtype, conv_general_dilated=conv_general_dilated,
                    rngs=rngs)


def _bn(c: int, *, zero: bool = False, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    init = nnx.initializers.zeros if zero else nnx.initializers.ones
    return make_norm("batchnorm", c, eps=1e-5, dtype=dtype, param_dtype=param_dtype,
                     rngs=rngs, scale_init=init)


class Shortcut(nnx.Module):
    """Projection shortcut: 1x1 conv with the block's stride + BN."""

    def __init__(self, cin: int, cout: int, stride: int, *, dtype, param_dtype, rngs):
        self.conv = _conv(cin, cout, 1, stride, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.bn = _bn(cout, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    """3x3 (stride) -> BN -> ReLU -> 3x3 -> BN -> drop path -> + shortcut -> ReLU."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, *, drop_path: float, dtype,
                 param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        cout = width * self.expansion
        self.conv1 = _conv(cin, width, 3, stride, **kw)
        self.bn1 = _bn(width, **kw)
        self.conv2 = _conv(width, cout, 3, 1, **kw)
        self.bn2 = _bn(cout, zero=True, **kw)
        self.downsample = (Shortcut(cin, cout, stride, **kw)
                           if stride != 1 or cin != cout else None)
        self.drop_path = DropPath(drop_path, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return jax.nn.relu(shortcut + scale_branch(y, self.drop_path(x.shape[0])))


class Bottleneck(nnx.Module):
    """1x1 -> BN -> ReLU -> 3x3 (stride, v1.5) -> BN -> ReLU -> 1x1 (x4) -> BN -> + shortcut."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, *, drop_path: float, dtype,
                 param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        cout = width * self.expansion
        self.conv1 = _conv(cin, width, 1, 1, **kw)
        self.bn1 = _bn(width, **kw)
        self.conv2 = _conv(width, width, 3, stride, **kw)
        self.bn2 = _bn(width, **kw)
        self.conv3 = _conv(width, cout, 1, 1, **kw)
        self.bn3 = _bn(cout, zero=True, **kw)
        self.downsample = (Shortcut(cin, cout, stride, **kw)
                           if stride != 1 or cin != cout else None)
        self.drop_path = DropPath(drop_path, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return jax.nn.relu(shortcut + scale_branch(y, self.drop_path(x.shape[0])))


class ResNet(nnx.Module):
    """ResNet v1.5 from a :class:`ResNetSpec`.

    ``model(x)``: (N, H, W, 3) NHWC floating, H, W >= 32 -> (N, num_classes) float32 logits.
    ``block_impl`` is accepted for a uniform ``create_model`` and has no effect: ResNets have
    no conv-first blocks. Module paths (timm): ``conv1``, ``bn1``,
    ``layers.{i}.{j}.{conv1,bn1,conv2,bn2[,conv3,bn3][,downsample.{conv,bn}]}``, ``fc``.
    """

    def __init__(self, spec: ResNetSpec, *, num_classes: int = 1000, block_impl: str = "xla",
                 dtype=jnp.float32, param_dtype=jnp.float32, drop_path: float = 0.0,
                 rngs: nnx.Rngs):
        check_block_impl(block_impl)
        self.spec = spec
        self.num_classes = num_classes
        self.block_impl = block_impl
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        block_cls = BasicBlock if spec.block == "basic" else Bottleneck
        self.conv1 = nnx.Conv(3, spec.width, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)),
                              use_bias=False, kernel_init=KAIMING_FAN_OUT,
                              conv_general_dilated=conv_general_dilated, **kw)
        self.bn1 = _bn(spec.width, **kw)
        rates = drop_path_rates(drop_path, spec.layers)
        cin, layers = spec.width, []
        for i, depth in enumerate(spec.layers):
            width = spec.width * 2 ** i
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block_cls(cin, width, stride, drop_path=rates[i][j], **kw))
                cin = width * block_cls.expansion
            layers.append(nnx.List(blocks))
        self.layers = nnx.List(layers)
        self.fc = nnx.Linear(cin, num_classes, dtype=jnp.float32, param_dtype=param_dtype,
                             rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        check_image_input(x, min_resolution=MIN_RESOLUTION, model_name=self.spec.name)
        x = jax.nn.relu(self.bn1(self.conv1(x.astype(self.dtype))))
        x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for layer in self.layers:
            for block in layer:
                x = block(x)
        return self.fc(x.astype(jnp.float32).mean(axis=(1, 2)))
