"""The accuracy-complexity study recipe: one shared schedule for every model (64 px, CPU).

``python -m train.study`` trains resnet18, convfirst_atto, convnext_atto and convfirst_atto_gw8
with this config, only ``model`` differs (``--config.model=NAME``). Same epochs,
learning rate, warm-up, augmentation (RandomResizedCrop scale (0.35, 1) + flip), label
smoothing, weight decay and seed for all four, so the accuracy and FLOPs-to-target columns
compare architectures, not recipes. Sized for a 2-core CPU: 5 epochs of Imagenette's 9,469
training images per model (see docs/results/cpu-imagenette-64px/ for the measured times).
"""

from __future__ import annotations

import ml_collections

from configs import cpu_small

#: The models of the study, in the order the sweep trains them (the resnet18 baseline first).
STUDY_MODELS = ("resnet18", "convfirst_atto", "convnext_atto", "convfirst_atto_gw8")
STUDY_BASELINE = "resnet18"
STUDY_TARGETS = (0.5, 0.6, 0.7)


def get_config() -> ml_collections.ConfigDict:
    c = cpu_small.get_config()
    c.model = STUDY_MODELS[0]
    c.num_epochs = 5
    c.learning_rate = 4e-3       # peak 1e-3 at batch 64
    c.warmup_epochs = 0.5        # < num_epochs, so the cosine decay reaches 0 at the end
    c.eval_every_epochs = 1
    c.log_every_steps = 25
    c.checkpoint_every_steps = 100
    c.accuracy_targets = STUDY_TARGETS
    c.num_workers = 2
    return c
