"""ConvFirst-tiny at 224 px, bf16, on one GPU (Lavin 2024, Sec. 3 ConvFirstNet)."""

from __future__ import annotations

import ml_collections

from configs import gpu_imagenette


def get_config() -> ml_collections.ConfigDict:
    c = gpu_imagenette.get_config()
    c.model = "convfirst_tiny"
    return c
