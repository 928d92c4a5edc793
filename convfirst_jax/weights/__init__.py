"""Weights in and out: PyTorch state dicts (timm, official ConvNeXt, torchvision) and run dirs.

* :func:`load_pretrained` / :func:`load_state_dict` -- import PyTorch weights.
* :func:`export_state_dict` -- write ours as timm-named ``.safetensors``.
* :func:`load_run` (``convfirst_jax.weights.run``) -- a trained model from a training workdir.
"""
from convfirst_jax.weights.pretrained import (  # noqa: F401
    check_state_dict, export_state_dict, load_pretrained, load_state_dict, model_state_dict,
    read_state_dict)
