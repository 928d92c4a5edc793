"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"), numerically as timm's convnext.py.

7x7 depthwise conv (bias) -> LayerNorm (eps 1e-6) -> Linear 4C -> exact GELU -> Linear C ->
layer scale (init 1e-6) -> drop path -> + input; LN patchify stem, LN + 2x2/2 downsampling,
pool -> LN -> Linear head. ConvNeXt-T: 28,589,128 params at 1000 classes.
"""

from __future__ import annotations

from convfirst_jax.models.macro import FourStageNet


class ConvNeXt(FourStageNet):
    """ConvNeXt from a ``family="convnext"`` spec; see :class:`FourStageNet` for the call."""

    family = "convnext"
