"""ResNet-18 at 64 px on the CPU: the Hernandez & Brown (2020) style compute baseline."""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = "resnet18"
    c.image_size = 64
    c.batch_size = 64
    c.num_epochs = 10
    c.learning_rate = 2e-3
    c.weight_decay = 0.05
    c.warmup_epochs = 1.0
    c.crop_min_scale = 0.35  # milder crops for short low-resolution schedules
    c.label_smoothing = 0.1
    return c
