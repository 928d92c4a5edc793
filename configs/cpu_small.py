"""Shared settings of the CPU configs: 64 px, batch 64, 10 epochs on 2 cores.

``data_dir=''`` trains on the embedded synthetic set; pass
``--config.data_dir=../shared/data/imagenette`` for Imagenette.
Per-model files (``*_cpu.py``) set the model and what differs from here.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.image_size = 64
    c.batch_size = 64
    c.num_epochs = 10
    c.learning_rate = 4e-3
    c.weight_decay = 0.05
    c.warmup_epochs = 1.0
    c.crop_min_scale = 0.35  # milder crops for short low-resolution schedules
    return c
