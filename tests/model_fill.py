"""Randomly-filled models for the tests (not a training initialisation).

A fresh ``create_model`` has trivial values where tests need signal: BatchNorm running
statistics at (0, 1), zero biases, ConvFirst's last BN gamma at zero and ConvNeXt's layer
scale at 1e-6, so a folding or weight-mapping bug in those terms would not show.
:func:`random_model` builds the module abstractly (``abstract_model``) and fills it from
NumPy with *non-trivial* values everywhere: fan-in scaled
weights, non-zero biases, norm scales in [0.5, 1.5], BatchNorm running means/variances away
from (0, 1) and O(1) layer scales, so every branch and every folding term is exercised.
"""

from __future__ import annotations

import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from convfirst_jax.models.registry import abstract_model


def _path_seed(seed: int, path) -> int:
    return zlib.crc32(f"{seed}/{'/'.join(map(str, path))}".encode())


def _fill(path, var, seed: int):
    sds = var.get_value() if hasattr(var, "get_value") else var.value
    shape, dtype = tuple(sds.shape), sds.dtype
    rng = np.random.default_rng(_path_seed(seed, path))
    leaf = path[-1]
    if isinstance(var, nnx.RngKey):
        data = rng.integers(0, 2**32, size=shape + (2,), dtype=np.uint32)
        return var.replace(jax.random.wrap_key_data(data))
    if isinstance(var, nnx.RngCount):
        return var.replace(jnp.zeros(shape, dtype))
    if leaf == "kernel":
        fan_in = math.prod(shape[:-1])
        value = rng.normal(0.0, 1.0 / math.sqrt(fan_in), shape)
    elif leaf in ("bias", "mean"):
        value = rng.normal(0.0, 0.2, shape)
    elif leaf == "var":
        value = rng.uniform(0.5, 2.0, shape)
    elif leaf in ("scale", "gamma"):
        value = rng.uniform(0.5, 1.5, shape)
    else:
        value = rng.normal(0.0, 0.2, shape)
    return var.replace(jnp.asarray(value, dtype))


def random_fill(module: nnx.Module, *, seed: int = 0) -> nnx.Module:
    """A copy of ``module`` (abstract or concrete) with every variable replaced by NumPy data.

    Values depend only on ``seed`` and each variable's path, so modules that differ only in
    static attributes (``block_impl``, ``dtype``) get identical parameters.
    """
    graphdef, state = nnx.split(module)
    flat = [(path, _fill(path, var, seed)) for path, var in nnx.to_flat_state(state)]
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def random_model(name, *, seed: int = 0, **create_kwargs) -> nnx.Module:
    """``create_model(name, **create_kwargs)`` with random NumPy state (see module docstring)."""
    return random_fill(abstract_model(name, **create_kwargs), seed=seed)
