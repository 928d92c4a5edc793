"""Flax NNX models: ConvNeXt, ConvFirstNet, ResNet, all built from ``convfirst_jax.specs``."""
from convfirst_jax.models.blocks import ConvFirstBlock  # noqa: F401
from convfirst_jax.models.cpu_paths import conv_impl, depthwise_impl  # noqa: F401
from convfirst_jax.models.macro import FourStageNet  # noqa: F401
from convfirst_jax.models.registry import abstract_model, create_model  # noqa: F401
from convfirst_jax.models.resnet import ResNet  # noqa: F401
