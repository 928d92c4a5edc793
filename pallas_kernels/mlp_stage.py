"""The 1x1 expand -> activation -> 1x1 project stage of the conv-first block and its project
epilogue, shared by the fused kernel (:mod:`pallas_kernels.fused_block`) and the split plan's
kernels (:mod:`pallas_kernels.split_block`)::

    z   = sum_chunks act(y @ w1[:, chunk] + b1[chunk]) @ w2[chunk, :]     # mlp_tile
    out = x + branch_scale[n] * layer_scale * (z + b2)                    # project_epilogue

The hidden activations exist one (tile, HC) chunk at a time on chip and never reach device
memory (Lavin 2024, arXiv 2404.03617, "block fusion"); both dots accumulate in float32 and
the activated chunk is rounded to the compute dtype before the project dot. Both functions
are traced inside a Pallas (Triton) kernel body.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu


_F32 = jnp.float32


def mlp_tile(ys: Sequence[jax.Array], w1_ref: Any, b1_ref: Any, w2_ref: Any, *,
             hidden_chunk: int, n_chunks: int, act: Callable[[jax.Array], jax.Array],
             compute_dtype: Any, out_split: int = 1, chunk0: Any = 0) -> tuple[jax.Array, ...]:
    """z (tile, Cp) float32 of one tile of y, as ``out_split`` accumulators of Cp /
    out_split columns each: a loop over ``n_chunks`` hidden chunks of width
    ``hidden_chunk`` (chunks ``chunk0 .. chunk0 + n_chunks - 1``: one part of a hidden
    dim split over programs, :attr:`pallas_kernels.tuning.LaunchConfig.hidden_parts`),
    each ``h = act(y @ w1[:, chunk] + b1[chunk])`` (f32; ``act`` the kernel form from
    :func:`pallas_kernels.activations.kernel_activation`) rounded to
    ``compute_dtype`` and added into ``z += h @ w2[chunk, :]`` (one dot per accumulator,
    all sharing h; the caller runs the epilogue one accumulator at a time).

    ``ys``: y in P parts (tile, Cp / P) of the compute dtype (the conv stage's parts, see
    :data:`pallas_kernels.conv_stage.CONV_MODES`); ``w1_ref`` (P, Cp / P, Hp) holds the rows of
    w1 in the same parts, so with P = 2 the expand is two dots with K = Cp / 2; ``b1_ref``
    (Hp,) float32, ``w2_ref`` (Hp, Cp).
    """
    tile = ys[0].shape[0]
    width = w2_ref.shape[1] // out_split

    def chunk(j, zs):
        index = j if isinstance(chunk0, int) and chunk0 == 0 else chunk0 + j
        start = pl.multiple_of(index * hidden_chunk, hidden_chunk)
        h = plgpu.dot(ys[0], w1_ref[0, :, pl.ds(start, hidden_chunk)])
        for p in range(1, len(ys)):
            h = h + plgpu.dot(ys[p], w1_ref[p, :, pl.ds(start, hidden_chunk)])
        h = act(h + b1_ref[pl.ds(start, hidden_chunk)][None, :]).astype(compute_dtype)
        if out_split == 1:
            return (zs[0] + plgpu.dot(h, w2_ref[pl.ds(start, hidden_chunk), :]),)
        return tuple(z + plgpu.dot(h, w2_ref[pl.ds(start, hidden_chunk), pl.ds(s * width,
                                                                              width)])
                     for s, z in enumerate(zs))

    return lax.fori_loop(0, n_chunks, chunk,
                         tuple(jnp.zeros((tile, width), _F32) for _ in range(out_split)))


def project_epilogue(z: jax.Array, x_ref: Any, b2_ref: Any, ls_ref: Any, bs_ref: Any,
                     o_ref: Any, *, rows: jax.Array, row_ok: jax.Array, col0: Any,
                     channels: int, pixels_per_image: int, has_layer_scale: bool,
                     has_branch_scale: bool) -> None:
    """Stores ``out = x + bs[n] * ls * (z + b2)`` for the (tile, width) f32 block ``z`` of
    output rows ``rows`` (flattened N*H*W pixels, ``row_ok`` their validity) and columns
    ``[col0, col0 + width)``; the branch scale is looked up per image (``rows //
    pixels_per_image``), padded channels (>= ``channels``) are masked when the padded width
    ``b2_ref.shape[0]`` differs from ``channels``. ``x_ref`` / ``o_ref`` are (rows, C)."""
    width = z.shape[1]
    z = z + b2_ref[pl.ds(col0, width)][None, :]
    if has_layer_scale:
        z = z * ls_ref[pl.ds(col0, width)][None, :]
    if has_branch_scale:
        image = lax.div(rows, pixels_per_image)
        z = z * plgpu.load(bs_ref.at[image], mask=row_ok, other=0.0)[:, None]
    cols = jnp.arange(width, dtype=jnp.int32)
    if not (isinstance(col0, int) and col0 == 0):  # the fused kernel: all columns, no add
        cols = col0 + cols
    mask = (row_ok[:, None] & (cols < channels)[None, :] if b2_ref.shape[0] != channels
            else row_ok[:, None])
    at = (rows[:, None], cols[None, :])
    residual = plgpu.load(x_ref.at[at], mask=mask, other=0.0).astype(_F32)
    plgpu.store(o_ref.at[at], (residual + z).astype(o_ref.dtype), mask=mask)


def sum_parts_epilogue(partials: jax.Array, x2: jax.Array, b2: jax.Array, ls: jax.Array,
                       bs: jax.Array, *, pixels_per_image: int, has_layer_scale: bool,
                       has_branch_scale: bool) -> jax.Array:
    """The project epilogue of a hidden dim split over G programs per tile, in XLA:
    ``z = partials[0] + partials[1] + ... + partials[G - 1]`` (this fixed order, f32; no
    atomics, so the result is deterministic), then :func:`project_epilogue`'s ``out = x +
    bs[n] * ls * (z + b2)`` in the same operation order. ``partials`` (G, rows, Cp) f32,
    ``x2`` (rows, C), ``b2`` / ``ls`` (Cp,) and ``bs`` (N,) float32 as the kernels get them
    (:func:`pallas_kernels.operands.mlp_operands`). Returns (rows, C) of ``x2.dtype``."""
    c = x2.shape[1]
    z = partials[0]
    for g in range(1, partials.shape[0]):
        z = z + partials[g]
    z = z[:, :c] + b2[None, :c]
    if has_layer_scale:
        z = z * ls[None, :c]
    if has_branch_scale:
        image = jnp.arange(x2.shape[0], dtype=jnp.int32) // pixels_per_image
        z = z * bs[image][:, None]
    return (x2.astype(_F32) + z).astype(x2.dtype)
