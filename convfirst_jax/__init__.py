"""convfirst-jax: efficient convnets in JAX/Pallas (Lavin 2024, arXiv 2404.03617).

The public names below are imported on first use (PEP 562), so that light submodules such as
:mod:`convfirst_jax.transforms` (numpy + PIL, imported by data-loader worker processes) do not
pull in jax and flax.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "apply_folded": "convfirst_jax.folding",
    "fold_batchnorm": "convfirst_jax.folding",
    "create_model": "convfirst_jax.models",
    "get_spec": "convfirst_jax.specs",
    "list_models": "convfirst_jax.specs",
    "export_state_dict": "convfirst_jax.weights",
    "load_pretrained": "convfirst_jax.weights",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'convfirst_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
