"""ConvNeXt-tiny at 224 px, bf16, on one GPU (Liu et al. 2022 recipe, scaled to Imagenette)."""

from __future__ import annotations

import ml_collections

from configs import gpu_imagenette


def get_config() -> ml_collections.ConfigDict:
    c = gpu_imagenette.get_config()
    c.model = "convnext_tiny"
    return c
