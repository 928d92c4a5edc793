"""Shared defaults for every training config (``python -m train --config configs/<name>.py``).

The configs of a data setting (``cpu_small.py``, ``gpu_imagenette.py``) start from
:func:`get_config` and override a few keys; they take the model as their argument
(``--config configs/cpu_small.py:resnet18``). The returned
``ConfigDict`` is locked by the training entry point, so a misspelt key in a config file or on
the command line stops with one error that lists the valid keys.

Learning rate convention: ``learning_rate`` is the *base* rate for a batch of 256 images; the
peak AdamW rate is ``learning_rate * batch_size / 256`` (linear scaling, Goyal et al. 2017, as in
the ConvNeXt recipe). Warm-up is linear from 0 to the peak over ``warmup_epochs``, then cosine
decay to 0 at the last step.
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    """Defaults: a small CPU run of the smallest ConvFirst on the embedded synthetic set."""
    c = ml_collections.ConfigDict()

    # Model (names: convfirst_jax.specs.MODEL_SPECS).
    c.model = "convfirst_atto"
    c.num_classes = 0            # 0 = number of class folders in data_dir/train
    c.block_impl = "xla"         # "xla" | "pallas" (fused conv-first block kernel)
    c.dtype = "float32"          # compute dtype: "float32" | "bfloat16" (params stay float32)
    c.drop_path = 0.0            # stochastic-depth rate at the deepest block

    # Data.
    c.data_dir = ""              # "" = embedded synthetic ImageNet-layout set (generated once)
    c.image_size = 64
    c.batch_size = 64            # global batch, split over all devices (must divide evenly)
    c.eval_batch_size = 128      # global eval batch (must divide by the device count)
    c.num_workers = 2            # grain worker processes (0 = in-process, fully deterministic)
    c.crop_min_scale = 0.08      # RandomResizedCrop area scale range (crop_min_scale, 1.0)
    c.allow_empty_classes = False  # True: a train class folder without images is still a class

    # Optimisation (AdamW, linear warm-up + cosine decay).
    c.num_epochs = 10
    c.max_steps = 0              # > 0 overrides num_epochs (tests, smoke runs)
    c.learning_rate = 4e-3       # base rate per 256 images; peak = learning_rate * batch_size / 256
    c.warmup_epochs = 1.0
    c.weight_decay = 0.05        # decoupled; masked off norms and biases (params with ndim <= 1)
    c.label_smoothing = 0.1
    c.grad_clip_norm = 1.0       # global-norm clipping, 0 = off
    c.ema_decay = 0.0            # 0 = off; else EMA of params and BN stats, used for eval
    c.seed = 0
    # A training loss above this stops the run as diverged (like NaN/Inf); 0 = auto:
    # max(20, 10 * ln(num_classes)), far above any sane cross-entropy (ln K at chance).
    c.divergence_loss = 0.0

    # Evaluation, logging, checkpoints.
    c.eval_every_epochs = 1
    c.eval_every_steps = 0       # > 0 overrides eval_every_epochs
    c.log_every_steps = 50
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3       # latest k are kept, plus the best by eval top-1
    c.accuracy_targets = (0.5, 0.7, 0.8)
    # Resuming a workdir with other settings than it was started with is refused (the changed
    # keys are listed); True allows it and records the change in workdir/config_changes.jsonl.
    # Keys in train.run_config.RESUME_FREE_KEYS (progress bar, logging, ...) may always change.
    c.allow_config_change = False

    # Start-up speed check (0 = skip): batches timed from a separate loader iterator and
    # train steps timed on a throw-away copy of the state.
    c.speed_check_batches = 8
    c.speed_check_steps = 3
    c.progress_bar = True
    return c
