"""The GPU configs: 224 px, bf16, Imagenette-sized (one GPU), one model per argument.

    python -m train --config configs/gpu_imagenette.py:convnext_tiny --workdir runs/convnext_tiny \\
        --config.data_dir=/path/to/imagenette

``get_config(model)`` (ml_collections' ``FILE.py:ARG``): ConvFirst-tiny (the default; Lavin
2024, Sec. 3), ConvNeXt-tiny (Liu et al. 2022 recipe, scaled to Imagenette), ResNet-50 (the
classic baseline of the paper's comparisons) or any other registered name;
:data:`MODEL_CHANGES` holds what differs per model. About 9.5k train images, 10 classes:
40 epochs of batch 128, EMA on, five accuracy targets. ``data_dir=''`` trains on the embedded
synthetic set (a smoke test). For the fused Pallas blocks: ``--config.block_impl=pallas``.
"""

from __future__ import annotations

import ml_collections

from configs import default

#: Settings that differ from the shared ones, per model.
MODEL_CHANGES = {"resnet50": {"drop_path": 0.05}}


def get_config(model: str = "convfirst_tiny") -> ml_collections.ConfigDict:
    c = default.get_config()
    c.model = model
    c.image_size = 224
    c.batch_size = 128
    c.eval_batch_size = 256
    c.dtype = "bfloat16"
    c.block_impl = "xla"
    c.num_workers = 8
    c.num_epochs = 40
    c.warmup_epochs = 3.0
    c.learning_rate = 2e-3
    c.weight_decay = 0.05
    c.drop_path = 0.1
    c.ema_decay = 0.999
    c.log_every_steps = 20
    c.checkpoint_every_steps = 250
    c.accuracy_targets = (0.5, 0.7, 0.8, 0.85, 0.9)
    c.update(MODEL_CHANGES.get(model, {}))
    return c
