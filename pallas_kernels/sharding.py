"""Run a per-example kernel once per batch shard of the ambient mesh (never an all-gather).

A ``pallas_call`` is opaque to XLA's SPMD partitioner, which would otherwise gather the whole
batch onto every device before the kernel. Inside ``with jax.set_mesh(mesh):`` we instead wrap
the call in ``jax.shard_map`` over the batch axis: each device runs the kernel on its own
examples, weights are replicated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.sharding import PartitionSpec as P


def batch_axis_size(batch_axis: str) -> int | None:
    """Size of ``batch_axis`` in the ambient (``jax.set_mesh``) mesh if it must be mapped.

    None when there is no ambient mesh, it has no such axis, or the axis is already manual
    (we are inside a shard_map over it), i.e. when the kernel should be called directly.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or batch_axis not in mesh.axis_names:
        return None
    if batch_axis in mesh.manual_axes:
        return None
    return int(mesh.shape[batch_axis])


def map_over_batch_shards(fn: Callable[..., jax.Array], batch_axis: str, x: jax.Array,
                          replicated: Any, per_example: Any) -> jax.Array:
    """``fn(x, replicated, per_example)``, run per shard of ``batch_axis`` when a mesh is set.

    ``x`` and every leaf of ``per_example`` are split along their leading (batch) dim,
    ``replicated`` (the weights) is passed whole to every shard.
    """
    size = batch_axis_size(batch_axis)
    if size is None:
        return fn(x, replicated, per_example)
    if x.shape[0] % size:
        raise ValueError(
            f"conv_first_block: batch size {x.shape[0]} is not divisible by the size {size} of "
            f"mesh axis {batch_axis!r}; pad the batch to a multiple of {size} (or call outside "
            "`jax.set_mesh`, or use block_impl=\"xla\").")
    return jax.shard_map(
        fn,
        in_specs=(P(batch_axis), P(), P(batch_axis)),
        out_specs=P(batch_axis),
        check_vma=False,
    )(x, replicated, per_example)
