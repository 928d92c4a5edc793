"""Run a per-example computation once per batch shard of the ambient mesh (no all-gather).

A ``pallas_call`` is opaque to XLA's SPMD partitioner, which would otherwise gather the whole
batch onto every device before the kernel. Inside ``with jax.set_mesh(mesh):`` we instead wrap
the call in ``jax.shard_map`` over the batch axis: each device runs on its own examples,
weights are replicated, and weight gradients are summed with an explicit ``psum``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
from jax.sharding import PartitionSpec as P


def batch_axis_size(batch_axis: str) -> int | None:
    """Size of ``batch_axis`` in the ambient (``jax.set_mesh``) mesh if it must be mapped.

    None when there is no ambient mesh, it has no such axis, or the axis is already manual
    (we are inside a shard_map over it): then the computation is called directly.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or batch_axis not in mesh.axis_names:
        return None
    if batch_axis in mesh.manual_axes:
        return None
    return int(mesh.shape[batch_axis])


def batch_shard_map(fn: Callable[..., Any], batch_axis: str, args: Sequence[Any],
                    batched: Sequence[bool], out_batched: Any) -> Any:
    """``fn(*args, axis_name=...)`` per shard of ``batch_axis`` when a mesh sets it.

    Args:
      fn: per-shard function; receives ``axis_name=batch_axis`` when mapped (so it can
        ``lax.psum`` over it) and ``axis_name=None`` when called directly.
      batch_axis: mesh axis name the batch (leading dim) is split over.
      args: positional arguments (pytrees; None allowed).
      batched: per argument, True if split along its leading dim, False if replicated.
      out_batched: pytree prefix of the output: True for batch-split, False for replicated.
    """
    size = batch_axis_size(batch_axis)
    if size is None:
        return fn(*args, axis_name=None)
    for a, b in zip(args, batched):
        for leaf in jax.tree.leaves(a):
            if b and leaf.shape[0] % size:
                raise ValueError(
                    f"conv_first_block: batch size {leaf.shape[0]} is not divisible by the size "
                    f"{size} of mesh axis {batch_axis!r}; pad the batch to a multiple of {size} "
                    "(or call outside `jax.set_mesh`, or use block_impl=\"xla\").")
    spec = lambda b: P(batch_axis) if b else P()  # noqa: E731
    args = list(args)
    if batch_axis in jax.sharding.get_abstract_mesh().explicit_axes:
        # Explicitly sharded arrays must already carry the in_specs' sharding: reshard
        # (a no-op for inputs that already are split along the batch).
        args = [jax.reshard(a, spec(b)) if jax.tree.leaves(a) else a
                for a, b in zip(args, batched)]
    return jax.shard_map(
        lambda *a: fn(*a, axis_name=batch_axis),
        in_specs=tuple(spec(b) for b in batched),
        out_specs=jax.tree.map(spec, out_batched),
        check_vma=False,
    )(*args)
