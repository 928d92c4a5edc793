"""The fused block under an ambient mesh runs per batch shard (shard_map), never all-gathers.

Uses the 4 simulated CPU devices from tests/conftest.py (XLA_FLAGS).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from pallas_kernels import conv_first_block, conv_first_block_reference
from kernel_cases import random_block_inputs

KW = dict(kernel_size=3, norm="layernorm", activation="gelu")

pytestmark = pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (simulated) devices")


@pytest.fixture(scope="module")
def inputs():
    return random_block_inputs(21, batch=8, height=5, width=6, channels=24, hidden=48,
                               kernel_size=3, layer_scale=True, branch_scale=True)


def _collectives(hlo: str) -> set[str]:
    return {op for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce")
            if op in hlo}


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_sharded_forward_has_no_all_gather(inputs, axis_type):
    x, params, bs = inputs
    mesh = jax.make_mesh((4,), ("data",), axis_types=(axis_type,))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    bss = jax.device_put(bs, NamedSharding(mesh, P("data")))
    with jax.set_mesh(mesh):
        fn = jax.jit(lambda x_, p_, b_: conv_first_block(x_, p_, branch_scale=b_, **KW))
        compiled = fn.lower(xs, params, bss).compile()
        out = compiled(xs, params, bss)
    hlo = compiled.as_text()
    assert "all-gather" not in hlo and not _collectives(hlo), _collectives(hlo)
    assert out.sharding.spec[0] == "data"
    ref = conv_first_block_reference(x, params, branch_scale=bs, **KW)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_sharded_grad_matches_reference(inputs):
    """Forward per shard, backward through XLA SPMD: weight grads all-reduce, no gathers."""
    x, params, bs = inputs
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Explicit,))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))

    def loss(block, x_, p_):
        return jnp.sum(jnp.sin(block(x_, p_, branch_scale=bs, **KW)))

    with jax.set_mesh(mesh):
        fn = jax.jit(jax.grad(lambda x_, p_: loss(conv_first_block, x_, p_), (0, 1)))
        compiled = fn.lower(xs, params).compile()
        gk = compiled(xs, params)
    assert "all-gather" not in compiled.as_text()
    gr = jax.jit(jax.grad(lambda x_, p_: loss(conv_first_block_reference, x_, p_), (0, 1)))(
        x, params)
    for a, b in zip(jax.tree.leaves(gk), jax.tree.leaves(gr)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_batch_not_divisible_by_mesh_raises(inputs):
    x, params, _ = inputs
    mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
        with pytest.raises(ValueError, match="not divisible"):
            jax.jit(lambda x_: conv_first_block(x_, params, **KW)).lower(x[:6])


def test_mesh_without_batch_axis_calls_kernel_directly(inputs):
    """A mesh that lacks `batch_axis` (here "model") does not trigger shard_map."""
    x, params, _ = inputs
    mesh = jax.make_mesh((4,), ("model",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
        jaxpr = jax.make_jaxpr(lambda x_: conv_first_block(x_, params, **KW))(x)
    assert "shard_map" not in str(jaxpr)
    with jax.set_mesh(jax.make_mesh((4,), ("data",), axis_types=(AxisType.Explicit,))):
        jaxpr = jax.make_jaxpr(lambda x_: conv_first_block(x_, params, **KW))(x)
    assert "shard_map" in str(jaxpr)
