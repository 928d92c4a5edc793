"""ConvNeXt-atto (timm depths/dims) at 64 px on the CPU: the LayerNorm/GELU/7x7 baseline."""

from __future__ import annotations

import ml_collections

from configs import cpu_small


def get_config() -> ml_collections.ConfigDict:
    c = cpu_small.get_config()
    c.model = "convnext_atto"
    return c
