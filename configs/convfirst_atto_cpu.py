"""ConvFirst-atto at 64 px on the CPU (the smallest ConvFirst; Lavin 2024, Sec. 3).

``data_dir=''`` trains on the embedded synthetic set; pass
``--config.data_dir=/work/shared/data/imagenette`` for Imagenette.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = "convfirst_atto"
    c.image_size = 64
    c.batch_size = 64
    c.num_epochs = 10
    c.learning_rate = 4e-3
    c.weight_decay = 0.05
    c.warmup_epochs = 1.0
    c.crop_min_scale = 0.35  # milder crops for short low-resolution schedules
    return c
