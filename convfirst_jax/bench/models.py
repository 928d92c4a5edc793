"""Whole-model timing: inference forward and (optionally) one fwd+bwd+AdamW train step.

Models come from ``convfirst_jax.create_model``; the forward runs in eval mode (for
``block_impl="pallas"`` ConvFirst blocks use BatchNorm folded into the kernel's weights, the
folding being part of the timed function, as it is part of the model's call). The analytic
costs (ops, unfused bytes, waterline) come from ``convfirst_jax.complexity.model_complexity``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from convfirst_jax.bench.ceilings import Ceilings
from convfirst_jax.complexity import ComplexityTable, fused_block_bytes, model_complexity, roofline
from convfirst_jax.dtypes import itemsize
from convfirst_jax.specs import FourStageNetSpec, get_spec

# A train step does the forward, the backward (about twice the forward's operations) and the
# optimizer update (elementwise, negligible): the usual 3x rule (Kaplan et al. 2020; also
# Hernandez & Brown 2020 count training compute this way).
TRAIN_FLOPS_FACTOR = 3


def model_table(name: str, resolution: int, batch_size: int, dtype: str,
                num_classes: int) -> ComplexityTable:
    """The unfused per-op cost table of ``name`` for this batch and dtype."""
    return model_complexity(name, resolution=resolution, batch_size=batch_size,
                            dtype_bytes=itemsize(dtype), num_classes=num_classes)


def model_floors(table: ComplexityTable, ceil: Ceilings) -> tuple[float, float | None]:
    """(unfused waterline, waterline with every conv-first block fused) in seconds.

    Fused: layers outside blocks keep their kernel floors; each conv-first block costs
    ``roofline.fused_block_floor`` with the BN-folded weights the kernel reads
    (``complexity.fused_block_bytes``) (Lavin 2024, waterline analysis). None for models
    without conv-first blocks (ResNets).
    """
    peak, bw = ceil.peak_flops, ceil.bandwidth
    unfused = roofline.waterline(table.layers, peak, bw)
    if not has_conv_first_blocks(table.model):
        return unfused, None
    outside = [l for l in table.layers if l.block is None]
    fused = roofline.waterline(outside, peak, bw)
    for layers in table.blocks.values():
        nbytes = fused_block_bytes(layers, batch=table.batch_size, dtype_bytes=table.dtype_bytes)
        fused += roofline.fused_block_floor(layers, peak, bw, nbytes=nbytes)
    return unfused, fused


def build_model(name: str, *, block_impl: str, dtype: str, num_classes: int, seed: int):
    """``create_model(name, ...)`` with its state filled from seeded numpy draws.

    The module is built abstractly (``nnx.eval_shape``) and every array filled with
    variance-preserving random values (weights ~ N(0, 1/fan_in), norm scales ~ 1, BatchNorm
    running statistics away from the identity, layer scales ~ 1 instead of 1e-6). Latency does
    not depend on the values, but the xla-vs-pallas output check does: at initialisation the
    blocks are nearly identities and the BatchNorms fold to nothing. The same seed gives the
    same weights for every ``block_impl`` (outputs comparable).
    """
    from convfirst_jax import create_model
    from flax import nnx

    def make():
        return create_model(name, num_classes=num_classes, block_impl=block_impl,
                            dtype=jnp.dtype(dtype), param_dtype=jnp.float32, seed=seed)

    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        field = next((k for k in reversed(keys) if k not in ("value", ".value")), "")
        shape, dt = tuple(leaf.shape), leaf.dtype
        if jax.dtypes.issubdtype(dt, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if not jnp.issubdtype(dt, jnp.floating):
            return jnp.zeros(shape, dt)
        z = rng.standard_normal(shape).astype(np.float32)
        if field == "var":
            v = 1.0 + 0.1 * np.abs(z)
        elif field in ("scale", "gamma"):
            v = 1.0 + 0.1 * z
        elif field in ("bias", "mean") or len(shape) <= 1:
            v = 0.05 * z
        else:  # conv (k, k, cin/g, cout) / linear (cin, cout) kernels
            v = z / np.sqrt(max(1, int(np.prod(shape[:-1]))))
        return jnp.asarray(v.astype(dt))

    state = jax.tree_util.tree_map_with_path(fill, abstract)
    return nnx.merge(graphdef, state)


def train_step_fn(model, *, learning_rate: float = 1e-3, weight_decay: float = 0.05
                  ) -> tuple[Callable[..., Any], tuple]:
    """(step(params, rest, opt_state, x, y), (params, rest, opt_state)): fwd + bwd + AdamW."""
    import optax
    from flax import nnx

    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)
    opt_state = tx.init(params)

    def step(params, rest, opt_state, x, y):
        m = nnx.merge(graphdef, params, rest)

        def loss_fn(m):
            logits = m(x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(m)  # grads w.r.t. the nnx.Param leaves
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        _, _, new_rest = nnx.split(m, nnx.Param, ...)  # BatchNorm running stats, RNG counts
        return params, new_rest, opt_state, loss

    return step, (params, rest, opt_state)


def has_conv_first_blocks(name: str) -> bool:
    return isinstance(get_spec(name), FourStageNetSpec)


def family_label(name: str) -> str:
    """"ConvFirst", "ConvNeXt" or "ResNet" (for plot legends)."""
    spec = get_spec(name)
    if isinstance(spec, FourStageNetSpec):
        return "ConvFirst" if spec.family == "convfirst" else "ConvNeXt"
    return "ResNet"
