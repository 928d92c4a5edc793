"""ConvFirstNet (Lavin 2024, arXiv 2404.03617, Sec. 3): the ConvNeXt macro with BatchNorm.

Blocks: k x k depthwise (or group width 8) conv -> BN -> 1x1 expand -> BN -> SiLU -> 1x1
project -> BN (gamma zero-initialised: each block starts as the identity) -> drop path ->
+ input; no conv/1x1 biases since BN follows. Stem: 4x4/4 conv (no bias) + BN; between
stages BN + 2x2/2 conv; head pool -> BN -> Linear. All BN folds away for inference
(:func:`convfirst_jax.folding.fold_batchnorm`).
"""

from __future__ import annotations

from convfirst_jax.models.macro import FourStageNet


class ConvFirstNet(FourStageNet):
    """ConvFirstNet from a ``family="convfirst"`` spec; see :class:`FourStageNet` for the call."""

    family = "convfirst"
