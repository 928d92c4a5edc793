"""ResNet-18 at 64 px on the CPU: the Hernandez & Brown (2020) style compute baseline."""

from __future__ import annotations

import ml_collections

from configs import cpu_small


def get_config() -> ml_collections.ConfigDict:
    c = cpu_small.get_config()
    c.model = "resnet18"
    c.learning_rate = 2e-3
    return c
