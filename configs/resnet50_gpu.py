"""ResNet-50 at 224 px, bf16, on one GPU: the classic baseline of the paper's comparisons."""

from __future__ import annotations

import ml_collections

from configs import gpu_imagenette


def get_config() -> ml_collections.ConfigDict:
    c = gpu_imagenette.get_config()
    c.model = "resnet50"
    c.drop_path = 0.05
    return c
