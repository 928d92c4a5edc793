"""The CPU configs: 64 px, batch 64, 10 epochs on 2 cores, one model per argument.

    python -m train --config configs/cpu_small.py:convnext_atto --workdir runs/convnext_atto_cpu

``get_config(model)`` (ml_collections' ``FILE.py:ARG``): the smallest ConvFirst (the default;
Lavin 2024, Sec. 3), ConvNeXt-atto (timm depths/dims: the LayerNorm/GELU/7x7 baseline),
ResNet-18 (the Hernandez & Brown 2020 style compute baseline) or any other registered name;
:data:`MODEL_CHANGES` holds what differs per model. ``data_dir=''`` trains on the embedded
synthetic set; pass ``--config.data_dir=../shared/data/imagenette`` for Imagenette.
"""

from __future__ import annotations

import ml_collections

from configs import default

#: Settings that differ from the shared ones, per model.
MODEL_CHANGES = {"resnet18": {"learning_rate": 2e-3}}


def get_config(model: str = "convfirst_atto") -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = model
    c.image_size = 64
    c.batch_size = 64
    c.num_epochs = 10
    c.learning_rate = 4e-3
    c.weight_decay = 0.05
    c.warmup_epochs = 1.0
    c.crop_min_scale = 0.35  # milder crops for short low-resolution schedules
    c.update(MODEL_CHANGES.get(model, {}))
    return c
