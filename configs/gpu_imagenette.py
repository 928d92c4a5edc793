"""Shared settings of the GPU configs: 224 px, bf16, Imagenette-sized (one GPU).

About 9.5k train images, 10 classes: 40 epochs of batch 128, EMA on, five accuracy targets.
Pass the data with ``--config.data_dir=/path/to/imagenette`` (ImageNet folder layout);
``data_dir=''`` trains on the embedded synthetic set (a smoke test).
For the fused Pallas blocks: ``--config.block_impl=pallas``.
Per-model files (``*_gpu.py``) set the model and what differs from here.
"""

from __future__ import annotations

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    c = default.get_config()
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
    return c
