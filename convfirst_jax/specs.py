"""Architecture descriptions: the single source of truth for every registered model.

The Flax NNX models (``convfirst_jax.models``) and the analytic complexity accounting
(``convfirst_jax.complexity``) are both built from these frozen dataclasses, so the two can
never drift apart; the accounting is then checked against XLA's cost analysis of the real
jitted model (tests/test_complexity.py).

A "conv-first block" (Lavin 2024, Sec. 3, "ConvFirst block"; Liu et al. 2022, Fig. 4 for
ConvNeXt) is::

    y   = conv_kxk(x, groups = C / group_width) + b0   # depthwise when group_width == 1
    y   = norm(y)                                      # BatchNorm or per-pixel LayerNorm
    h   = act(norm?(y @ W1 + b1))                      # 1x1 expand to E*C channels
    z   = norm?(h @ W2 + b2)                           # 1x1 project back to C
    out = x + drop_path(layer_scale * z)

ConvFirst applies BatchNorm after the conv, after the expand and after the project; ConvNeXt
applies one LayerNorm after the conv and a learned layer scale at the end.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from pallas_kernels.options import ACTIVATIONS

NormKind = Literal["batchnorm", "layernorm"]


@dataclasses.dataclass(frozen=True)
class ConvFirstBlockConfig:
    """Hyper-parameters of one conv-first block (shared by ConvFirst and ConvNeXt).

    Attributes:
      channels: C, input = output channels of the block.
      kernel_size: k of the k x k grouped/depthwise conv.
      group_width: channels per conv group (1 = depthwise, 8 = ConvFirst "gw8").
      expansion: E, hidden width of the 1x1 MLP is E * C.
      norm: "batchnorm" (ConvFirst: BN after conv, expand and project) or
        "layernorm" (ConvNeXt: one per-pixel LN after the conv).
      activation: one of ACTIVATIONS ("gelu" is the exact erf GELU).
      layer_scale_init: initial value of the per-channel layer scale, None for no layer scale.
      conv_bias: whether the k x k conv has a bias (ConvNeXt: yes; ConvFirst: no, BN follows).
      mlp_bias: whether the 1x1 convs have biases (ConvNeXt: yes; ConvFirst: no, BN follows).
      norm_eps: epsilon of the norm layers.
    """

    channels: int
    kernel_size: int = 3
    group_width: int = 1
    expansion: int = 4
    norm: NormKind = "batchnorm"
    activation: str = "silu"
    layer_scale_init: float | None = None
    conv_bias: bool = False
    mlp_bias: bool = False
    norm_eps: float = 1e-5

    def __post_init__(self):
        if self.channels % self.group_width:
            raise ValueError(
                f"channels={self.channels} is not divisible by group_width={self.group_width}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if self.norm not in ("batchnorm", "layernorm"):
            raise ValueError(f"unknown norm {self.norm!r}; valid: batchnorm, layernorm")

    @property
    def hidden(self) -> int:
        return self.expansion * self.channels

    def kernel_options(self) -> dict:
        """Static keyword arguments of ``pallas_kernels.conv_first_block`` for this block after
        inference folding: a BatchNorm block folds into the weights and runs ``norm="affine"``."""
        return dict(kernel_size=self.kernel_size,
                    norm="layernorm" if self.norm == "layernorm" else "affine",
                    activation=self.activation, group_width=self.group_width,
                    eps=self.norm_eps)


@dataclasses.dataclass(frozen=True)
class FourStageNetSpec:
    """A four-stage network of conv-first blocks (Liu et al. 2022, Fig. 2): ConvNeXt and
    ConvFirstNet are two settings of these fields.

    Stem: ``stem_size`` x ``stem_size`` conv, stride ``stem_size`` (patchify) + norm.
    Between stages: norm + 2x2 stride-2 conv. Head: global average pool -> norm -> Linear.
    ``norm``/``norm_eps`` is every norm of the network: "layernorm" (ConvNeXt, eps 1e-6,
    biased convs and 1x1s) or "batchnorm" (ConvFirstNet, eps 1e-5, no conv/1x1 biases where
    a BN follows, so ``stem_bias``, ``conv_bias`` and ``mlp_bias`` are off).
    """

    name: str
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    kernel_size: int
    group_width: int = 1
    expansion: int = 4
    activation: str = "gelu"
    layer_scale_init: float | None = None
    stem_size: int = 4
    norm: NormKind = "batchnorm"
    norm_eps: float = 1e-5
    stem_bias: bool = False
    conv_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self):
        if len(self.depths) != len(self.dims):
            raise ValueError(f"{self.name}: depths {self.depths} and dims {self.dims} must "
                             "have one entry per stage")
        # The block config validates norm, activation and group width for every stage.
        for stage in range(len(self.dims)):
            self.block_config(stage)

    @property
    def family(self) -> Literal["convnext", "convfirst"]:
        """The PyTorch naming family of the weights: "convnext" for LayerNorm networks
        (timm's ConvNeXt layout), "convfirst" for BatchNorm ones (with the extra BNs)."""
        return "convnext" if self.norm == "layernorm" else "convfirst"

    def block_config(self, stage: int) -> ConvFirstBlockConfig:
        """The conv-first block of ``stage`` (0-based)."""
        return ConvFirstBlockConfig(
            channels=self.dims[stage], kernel_size=self.kernel_size,
            group_width=self.group_width, expansion=self.expansion, norm=self.norm,
            activation=self.activation, layer_scale_init=self.layer_scale_init,
            conv_bias=self.conv_bias, mlp_bias=self.mlp_bias, norm_eps=self.norm_eps)


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """ResNet v1.5 (stride on the 3x3 conv of the bottleneck), BatchNorm, timm layout."""

    name: str
    block: Literal["basic", "bottleneck"]
    layers: tuple[int, int, int, int]
    width: int = 64


ModelSpec = FourStageNetSpec | ResNetSpec


def _convnext(name, depths, dims) -> FourStageNetSpec:
    return FourStageNetSpec(name=name, depths=depths, dims=dims, kernel_size=7,
                            activation="gelu", layer_scale_init=1e-6, norm="layernorm",
                            norm_eps=1e-6, stem_bias=True, conv_bias=True, mlp_bias=True)


def _convfirst(name, depths, dims, group_width=1) -> FourStageNetSpec:
    return FourStageNetSpec(name=name, depths=depths, dims=dims, kernel_size=3,
                            group_width=group_width, activation="silu", layer_scale_init=None,
                            norm="batchnorm", norm_eps=1e-5)


# ConvNeXt depths/dims exactly as timm's convnext.py.
_CONVNEXT = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}

# ConvFirstNet: power-of-two widths (Triton/tensor-core friendly), 3x3 depthwise, E=4,
# each size at or below the GMACs of the ConvNeXt of the same name at 224 px.
# This is our own design in the spirit of the paper, not the paper's exact table.
_CONVFIRST = {
    "atto": ((2, 2, 6, 2), (32, 64, 128, 256)),
    "femto": ((3, 3, 9, 3), (32, 64, 128, 256)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((3, 3, 12, 3), (64, 128, 256, 512)),
    "tiny": ((3, 3, 27, 3), (64, 128, 256, 512)),
}

MODEL_SPECS: dict[str, ModelSpec] = {}
for _size, (_d, _c) in _CONVNEXT.items():
    MODEL_SPECS[f"convnext_{_size}"] = _convnext(f"convnext_{_size}", _d, _c)
for _size, (_d, _c) in _CONVFIRST.items():
    MODEL_SPECS[f"convfirst_{_size}"] = _convfirst(f"convfirst_{_size}", _d, _c)
    MODEL_SPECS[f"convfirst_{_size}_gw8"] = _convfirst(f"convfirst_{_size}_gw8", _d, _c, 8)
MODEL_SPECS["resnet18"] = ResNetSpec("resnet18", "basic", (2, 2, 2, 2))
MODEL_SPECS["resnet50"] = ResNetSpec("resnet50", "bottleneck", (3, 4, 6, 3))


def list_models() -> list[str]:
    """Names accepted by ``create_model``, sorted."""
    return sorted(MODEL_SPECS)


def get_spec(name: str) -> ModelSpec:
    """The architecture description of a registered model; unknown names list the valid ones."""
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}") from None
