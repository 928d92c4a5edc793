"""Whole ``block_impl="pallas"`` models export for CUDA from a CPU host (no GPU needed).

``conv_first_block(interpret=None)`` picks its implementation per *lowering* platform
(``lax.platform_dependent``), so ``jax.export(platforms=["cuda"])`` of a whole model on this CPU
machine must contain one Triton custom call per conv-first block and nothing of the Pallas
interpreter (which lowers the grid to a ``stablehlo.while`` loop), while running the same
model on the CPU still uses the interpreter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model_fill import abstract_model
from convfirst_jax.specs import MODEL_SPECS
from pallas_kernels import (block_kernel_count, conv_first_block, conv_first_block_reference,
                            cuda_export_target)
from kernel_cases import random_block_inputs

TRITON_CALL = "__gpu$xla.gpu.triton"
DISABLED = [jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)]


def _export_text(fn, *args, platforms=("cuda",)) -> str:
    try:
        with cuda_export_target():  # jax 0.11 needs the target GPU named
            exported = jax.export.export(jax.jit(fn), platforms=list(platforms),
                                         disabled_checks=DISABLED)(*args)
    except RuntimeError as e:  # jaxlib that compiles Triton while lowering (no CUDA here)
        if "Triton compilation handler" in str(e):
            pytest.skip("this jaxlib compiles Triton at lowering time and has no CUDA compiler")
        raise
    assert exported.platforms == tuple(platforms)
    return exported.mlir_module()


@pytest.mark.parametrize("name", ["convnext_atto", "convfirst_atto"])
def test_pallas_model_exports_triton_for_every_block(name):
    model = abstract_model(name, block_impl="pallas", num_classes=10)
    model.eval()  # ConvFirst BatchNorm blocks are fused in eval mode
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    text = _export_text(lambda s, x_: nnx.merge(graphdef, s)(x_), state, x)
    spec = MODEL_SPECS[name]
    n_blocks = sum(spec.depths)
    # one fused kernel per block; wide blocks run the split plan's kernels, except in calls
    # too small for it (tuning.split_small_call: every block at this 32 px input)
    n_calls = sum(depth * block_kernel_count(cfg.channels, cfg.kernel_size, cfg.group_width,
                                             cfg.hidden, jnp.float32,
                                             rows=2 * (32 // spec.stem_size // 2 ** i) ** 2)
                  for i, (depth, cfg) in enumerate((d, spec.block_config(i))
                                                   for i, d in enumerate(spec.depths)))
    assert text.count(TRITON_CALL) == n_calls >= n_blocks, (
        f"{text.count(TRITON_CALL)} Triton calls for {n_blocks} blocks, expected {n_calls}")
    assert "stablehlo.while" not in text, "the Pallas interpreter leaked into the CUDA export"


def _block_fn(interpret):
    _, params, _ = random_block_inputs(0, batch=2, height=5, width=5, channels=16, hidden=32,
                                       kernel_size=3)
    kw = dict(kernel_size=3, norm="layernorm", activation="gelu", interpret=interpret)
    return params, kw, lambda x_: conv_first_block(x_, params, **kw)


def test_block_default_is_per_platform():
    """interpret=None: Triton for cuda, interpreter for cpu; explicit True/False are kept."""
    _, _, fn = _block_fn(None)
    x = jax.ShapeDtypeStruct((2, 5, 5, 16), jnp.float32)
    cuda = _export_text(fn, x)
    assert TRITON_CALL in cuda and "stablehlo.while" not in cuda
    cpu = _export_text(fn, x, platforms=("cpu",))
    assert TRITON_CALL not in cpu and "stablehlo.while" in cpu
    _, _, forced = _block_fn(True)
    forced_cuda = _export_text(forced, x)
    assert TRITON_CALL not in forced_cuda and "stablehlo.while" in forced_cuda


def test_block_default_runs_on_cpu():
    x, params, _ = random_block_inputs(1, batch=2, height=5, width=5, channels=16, hidden=32,
                                       kernel_size=3)
    _, kw, _ = _block_fn(None)
    del kw["interpret"]
    out = jax.jit(lambda x_: conv_first_block(x_, params, **kw))(x)
    ref = conv_first_block_reference(x, params, **kw)
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * float(jnp.abs(ref).max()))


def test_multi_platform_export_holds_both_and_runs_on_cpu():
    """platforms=["cpu", "cuda"]: the Triton kernel for cuda, the interpreter for cpu; the
    exported program runs on this CPU."""
    x, params, _ = random_block_inputs(2, batch=2, height=5, width=5, channels=16, hidden=32,
                                       kernel_size=3)
    _, kw, _ = _block_fn(None)
    del kw["interpret"]
    fn = lambda x_: conv_first_block(x_, params, **kw)  # noqa: E731
    try:
        with cuda_export_target():
            exported = jax.export.export(jax.jit(fn), platforms=["cpu", "cuda"],
                                         disabled_checks=DISABLED)(x)
    except RuntimeError as e:
        if "Triton compilation handler" in str(e):
            pytest.skip("this jaxlib compiles Triton at lowering time and has no CUDA compiler")
        raise
    text = exported.mlir_module()
    assert text.count(TRITON_CALL) == 1 and "stablehlo.while" in text
    ref = conv_first_block_reference(x, params, **kw)
    np.testing.assert_allclose(exported.call(x), ref, rtol=0,
                               atol=2e-5 * float(jnp.abs(ref).max()))
