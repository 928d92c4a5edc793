"""Random inputs and the covered cases of the conv-first block kernel tests; numpy only."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def random_block_inputs(
    seed: int, *, batch: int, height: int, width: int, channels: int, hidden: int,
    kernel_size: int, group_width: int = 1, dtype: Any = jnp.float32,
    layer_scale: bool = True, branch_scale: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array], jax.Array | None]:
    """``(x, params, branch_scale)`` with O(1) activations for every stage of the block.

    Conv weights are scaled by 1/sqrt(k*k*group_width) and the 1x1 weights by
    1/sqrt(fan_in), so y, h and z all have unit-order magnitudes; the layer scale is O(1)
    (not the 1e-6 init of ConvNeXt) so the residual branch is visible in the output. Params
    are float32; ``x`` and ``branch_scale`` are returned in ``dtype`` / float32.
    """
    rng = np.random.default_rng(seed)
    c, k = channels, kernel_size

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    params = {
        "conv_w": normal(k, k, group_width, c, scale=1.0 / np.sqrt(k * k * group_width)),
        "conv_b": normal(c, scale=0.2),
        "norm_scale": (1.0 + normal(c, scale=0.2)),
        "norm_shift": normal(c, scale=0.2),
        "w1": normal(c, hidden, scale=1.0 / np.sqrt(c)),
        "b1": normal(hidden, scale=0.2),
        "w2": normal(hidden, c, scale=1.0 / np.sqrt(hidden)),
        "b2": normal(c, scale=0.2),
    }
    if layer_scale:
        params["layer_scale"] = rng.uniform(0.5, 1.5, c).astype(np.float32) * rng.choice(
            np.array([-1.0, 1.0], np.float32), c)
    x = jnp.asarray(normal(batch, height, width, c).astype(jnp.dtype(dtype)))
    bs = None
    if branch_scale:  # drop-path style: sample 0 kept (x2), sample 1 dropped, rest random
        values = rng.choice(np.array([0.0, 1.25, 2.0], np.float32), batch)
        values[:2] = np.array([2.0, 0.0], np.float32)[:batch]
        bs = jnp.asarray(values)
    return x, {k_: jnp.asarray(v) for k_, v in params.items()}, bs


# Covering design for the forward-pass tests (tests/test_kernel.py) and the CUDA-lowering
# tests (tests/test_kernel_export.py). Axes: k, C, E, (H, W), N, norm, activation, dtype;
# plus group width, layer scale and branch scale riding along. Every value of every axis
# appears, and every (k, C), (norm, activation), (dtype, norm) pair appears at least once
# (checked by test_covering_design_covers).
@dataclasses.dataclass(frozen=True)
class Case:
    k: int
    c: int
    e: int
    hw: tuple[int, int]
    n: int
    norm: str
    act: str
    dtype: str
    gw: int = 1
    ls: bool = False
    bs: bool = False

    @property
    def id(self) -> str:
        return (f"k{self.k}-C{self.c}-E{self.e}-{self.hw[0]}x{self.hw[1]}-N{self.n}-{self.norm}-"
                f"{self.act}-{self.dtype}-gw{self.gw}{'-ls' if self.ls else ''}"
                f"{'-bs' if self.bs else ''}")


A, L = "affine", "layernorm"
CASES = [
    Case(3, 8, 2, (7, 9), 1, A, "relu", "float32"),
    Case(3, 40, 4, (14, 14), 3, L, "silu", "bfloat16", ls=True),
    Case(3, 64, 2, (1, 1), 3, A, "gelu", "float32", gw=8, bs=True),
    Case(3, 96, 4, (7, 9), 1, L, "gelu_tanh", "float32", ls=True, bs=True),
    Case(3, 128, 2, (14, 14), 1, A, "silu", "bfloat16", gw=8),
    Case(5, 8, 4, (1, 1), 1, L, "relu", "bfloat16", gw=8, ls=True),
    Case(5, 40, 2, (7, 9), 3, A, "gelu_tanh", "float32", gw=8, ls=True, bs=True),
    Case(5, 64, 4, (14, 14), 3, L, "gelu", "float32"),
    Case(5, 96, 2, (1, 1), 1, A, "relu", "bfloat16", bs=True),
    Case(5, 128, 4, (7, 9), 3, L, "silu", "float32", ls=True),
    Case(7, 8, 2, (14, 14), 3, A, "silu", "float32", ls=True),
    Case(7, 40, 4, (7, 9), 1, L, "gelu", "bfloat16", ls=True, bs=True),
    Case(7, 64, 2, (1, 1), 1, L, "gelu_tanh", "bfloat16"),
    Case(7, 96, 4, (14, 14), 1, A, "gelu", "float32", gw=8),
    Case(7, 128, 2, (7, 9), 3, L, "relu", "float32", ls=True, bs=True),
    Case(3, 64, 4, (7, 9), 3, L, "gelu", "float16", ls=True),  # float16 smoke case
]

AXES = {
    "k": (3, 5, 7), "c": (8, 40, 64, 96, 128), "e": (2, 4),
    "hw": ((7, 9), (14, 14), (1, 1)), "n": (1, 3), "norm": (A, L),
    "act": ("relu", "silu", "gelu", "gelu_tanh"), "dtype": ("float32", "bfloat16"),
}
