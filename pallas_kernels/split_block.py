"""The split plan of the conv-first block for wide blocks: three Pallas (Triton) kernels.

The fused kernel (:mod:`pallas_kernels.fused_block`) keeps a (tile, C) f32 conv output and a
(tile, C) f32 projection accumulator in registers for the whole program; at C >= 256 that caps
its tile at 32 / 16 pixels, so both 1x1 matmuls run as mma.sync with M = 16-32 and every
program re-reads all of w1 and w2 (4 C^2 x 2 bytes each) from L2: at C = 512, 7 x 7, batch 128
that is ~1.6 GB of L2 traffic for 26 GFLOP (static H100 model, docs/results/static-h100/). Here
the block runs as::

    y   = norm(dwconv(x) + conv_b)           # conv_norm kernel: tiles of pixels, all C
    h   = act(y @ w1 + b1)                   # expand GEMM, (block_m, block_n) output tiles
    out = x + bs[n] * ls * (h @ w2 + b2)     # project GEMM, residual / scales in its epilogue

with y and h in HBM in the compute dtype. The numerics are the fused kernel's: it rounds y
and h to the compute dtype before the two dots as well (f32 accumulation, f32 activation), so
only the f32 summation order inside the dots differs. The extra HBM traffic is y and h written
and read once: 2 * (C + 4 C) * 2 bytes per pixel in bfloat16, 64 MB (21 µs at 3 TB/s) at
C = 512, 7 x 7, batch 128, against ~1.6 GB of L2 traffic saved. The GEMMs are the classic
Triton form (Tillet et al. 2019): a K loop of (block_m, block_k) @ (block_k, block_n) dots,
software-pipelined (``num_stages``), f32 accumulator of one output tile.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.activations import KERNEL_ACTIVATIONS
from pallas_kernels.conv_stage import conv_mode, conv_norm_tile, prepare_conv_operands
from pallas_kernels.operands import mlp_operands
from pallas_kernels.options import BlockOptions
from pallas_kernels.tuning import (MIN_DOT_DIM, SplitLaunchConfig, gemm_block_n,
                                   padded_channels, split_launch_config)

_F32 = jnp.float32

#: The kernels of the split plan, in launch order (pallas_call names carry these).
SPLIT_KERNELS = ("conv_norm", "expand", "project")


def _conv_norm_kernel(x_ref, xp_ref, cw_ref, cb_ref, ns_ref, nb_ref, y_ref, *, height: int,
                      width: int, channels: int, total_rows: int, tile: int,
                      kernel_size: int, group_width: int, norm: str, eps: float, mode: str):
    """y = norm(dwconv(x) + conv_b) of ``tile`` flattened pixels, all ``Cp`` channels, in
    the compute dtype (padded channels 0). Paired bfloat16 stores channel pairs as uint32
    (``y_ref`` is then the (rows, Cp / 2) uint32 view of y)."""
    rows = pl.program_id(0) * tile + jnp.arange(tile, dtype=jnp.int32)
    row_ok = rows < total_rows
    ys = conv_norm_tile(x_ref, xp_ref, cw_ref, cb_ref, ns_ref, nb_ref, rows=rows,
                        row_ok=row_ok, height=height, width=width, channels=channels,
                        kernel_size=kernel_size, group_width=group_width, norm=norm, eps=eps,
                        mode=mode, compute_dtype=x_ref.dtype)
    cpart = cb_ref.shape[1]
    if mode == "paired":  # even channel in the low half, odd in the high half (as loaded)
        even, odd = (lax.bitcast_convert_type(y, jnp.uint16).astype(jnp.uint32) for y in ys)
        cols = jnp.arange(cpart, dtype=jnp.int32)
        plgpu.store(y_ref.at[rows[:, None], cols[None, :]],
                    even | lax.shift_left(odd, jnp.uint32(16)), mask=row_ok[:, None])
        return
    for p, y in enumerate(ys):  # part p = channels [p * cpart, (p + 1) * cpart)
        cols = p * cpart + jnp.arange(cpart, dtype=jnp.int32)
        plgpu.store(y_ref.at[rows[:, None], cols[None, :]], y, mask=row_ok[:, None])


def _gemm_kernel(a_ref, b_ref, bias_ref, *rest, total_rows: int, k_dim: int, block_m: int,
                 block_n: int, block_k: int, sub_tiles: int, epilogue: str, activation: str,
                 channels: int, pixels_per_image: int, has_layer_scale: bool,
                 has_branch_scale: bool):
    """One (block_m, block_n) tile of ``a @ b`` (f32 accumulation over a K loop) and its
    epilogue: "expand" ``act(acc + b1)`` -> compute dtype; "project"
    ``x + bs[n] * ls * (acc + b2)`` (``rest`` = x, layer scale, branch scale[, init], out).

    ``sub_tiles`` > 1: the tile's columns are that many accumulators of block_n / sub_tiles
    columns sharing each loaded (block_m, block_k) slice of ``a`` (the L2 traffic of the
    whole tile), with the epilogue run one accumulator at a time (fewer live registers than
    one wide accumulator's epilogue).
    """
    o_ref = rest[-1]
    rows = pl.program_id(0) * block_m + jnp.arange(block_m, dtype=jnp.int32)
    row_ok = rows < total_rows
    sub_n = block_n // sub_tiles
    col0 = pl.multiple_of(pl.program_id(1) * block_n, block_n)

    def step(t, accs):
        k0 = pl.multiple_of(t * block_k, block_k)
        ks = k0 + jnp.arange(block_k, dtype=jnp.int32)
        a = plgpu.load(a_ref.at[rows[:, None], ks[None, :]], mask=row_ok[:, None], other=0.0)
        return tuple(acc + plgpu.dot(a, b_ref[pl.ds(k0, block_k), pl.ds(col0 + s * sub_n,
                                                                          sub_n)])
                     for s, acc in enumerate(accs))

    accs = lax.fori_loop(0, k_dim // block_k, step,
                         tuple(jnp.zeros((block_m, sub_n), _F32) for _ in range(sub_tiles)))
    for s, acc in enumerate(accs):
        c0 = col0 + s * sub_n
        cols = c0 + jnp.arange(sub_n, dtype=jnp.int32)
        acc = acc + bias_ref[pl.ds(c0, sub_n)][None, :]
        if epilogue == "expand":
            h = KERNEL_ACTIVATIONS[activation](acc)
            plgpu.store(o_ref.at[rows[:, None], cols[None, :]], h.astype(o_ref.dtype),
                        mask=row_ok[:, None])
            continue
        x_ref, ls_ref, bs_ref = rest[:3]
        if has_layer_scale:
            acc = acc * ls_ref[pl.ds(c0, sub_n)][None, :]
        if has_branch_scale:
            image = lax.div(rows, pixels_per_image)
            acc = acc * plgpu.load(bs_ref.at[image], mask=row_ok, other=0.0)[:, None]
        mask = row_ok[:, None] & (cols < channels)[None, :]
        at = (rows[:, None], cols[None, :])
        residual = plgpu.load(x_ref.at[at], mask=mask, other=0.0).astype(_F32)
        plgpu.store(o_ref.at[at], (residual + acc).astype(o_ref.dtype), mask=mask)


def split_launch(x_shape: tuple[int, ...], x_dtype: Any, params: Mapping[str, Any],
                 kernel_size: int, group_width: int) -> SplitLaunchConfig:
    """The split plan's launch parameters for one call (table entry or default rule)."""
    n, h, w, c = x_shape
    return split_launch_config(padded_channels(c), kernel_size, group_width,
                               params["w1"].shape[1], jnp.dtype(x_dtype).name, rows=n * h * w)


def split_forward(x: jax.Array, params: Mapping[str, Any], opts: BlockOptions,
                  branch_scale: jax.Array | None, out_init: jax.Array | None) -> jax.Array:
    """The block as three ``pallas_call`` s (see the module docstring); ``opts.interpret``
    a bool, ``params`` validated; ``out_init`` is aliased to the output (see
    :func:`pallas_kernels.fused_block.fused_forward`)."""
    n, hgt, wid, c = x.shape
    cp = padded_channels(c)
    total_rows = n * hgt * wid
    dtype = x.dtype
    lc = split_launch(x.shape, dtype, params, opts.kernel_size, opts.group_width)
    mode = conv_mode(dtype, c, opts.group_width)
    compiler = functools.partial(plgpu.CompilerParams, num_stages=lc.num_stages)
    x2 = x.reshape(total_rows, c)
    name = f"k{opts.kernel_size}_gw{opts.group_width}"

    # 1. y = norm(dwconv(x) + conv_b), (rows, Cp) in x.dtype
    conv_ops = prepare_conv_operands(x, params, mode)
    y_shape = ((total_rows, cp // 2), jnp.uint32) if mode == "paired" else ((total_rows, cp),
                                                                            dtype)
    y = pl.pallas_call(
        functools.partial(_conv_norm_kernel, height=hgt, width=wid, channels=c,
                          total_rows=total_rows, tile=lc.conv_tile,
                          kernel_size=opts.kernel_size, group_width=opts.group_width,
                          norm=opts.norm, eps=float(opts.eps), mode=mode),
        out_shape=jax.ShapeDtypeStruct(*y_shape),
        grid=(pl.cdiv(total_rows, lc.conv_tile),),
        compiler_params=plgpu.CompilerParams(num_warps=lc.conv_warps, num_stages=1),
        interpret=opts.interpret, name=f"conv_first_block_conv_norm_{name}",
    )(x2, *conv_ops)
    if mode == "paired":
        y = lax.bitcast_convert_type(y, dtype).reshape(total_rows, cp)

    hidden = params["w1"].shape[1]
    expand_n = gemm_block_n(lc.expand_block_n, lc.block_m, total_rows, hidden)
    w1, b1, w2, b2, ls, bs = mlp_operands(x, params, branch_scale, max(expand_n, lc.block_k))
    hp = w1.shape[1]
    project_n = gemm_block_n(lc.block_n, lc.block_m, total_rows, cp)
    gemm = functools.partial(
        _gemm_kernel, total_rows=total_rows, block_m=lc.block_m, block_k=lc.block_k,
        activation=opts.activation, channels=c, pixels_per_image=hgt * wid,
        has_layer_scale=params.get("layer_scale") is not None,
        has_branch_scale=branch_scale is not None)
    grid_m = pl.cdiv(total_rows, lc.block_m)

    def sub_tiles(block_n, table_n, split):  # accumulators of table_n / split columns
        return max(1, block_n // max(MIN_DOT_DIM, table_n // split))

    # 2. h = act(y @ w1 + b1), (rows, Hp) in x.dtype
    h = pl.pallas_call(
        functools.partial(gemm, k_dim=cp, block_n=expand_n,
                          sub_tiles=sub_tiles(expand_n, lc.expand_block_n, lc.expand_split),
                          epilogue="expand"),
        out_shape=jax.ShapeDtypeStruct((total_rows, hp), dtype),
        grid=(grid_m, hp // expand_n),
        compiler_params=compiler(num_warps=lc.num_warps),
        interpret=opts.interpret, name=f"conv_first_block_expand_{name}",
    )(y, w1, b1)

    # 3. out = x + bs * ls * (h @ w2 + b2), (rows, C)
    args = (h, w2, b2, x2, ls, bs)
    aliases = {}
    if out_init is not None:
        aliases = {len(args): 0}
        args = (*args, out_init.reshape(total_rows, c))
    out = pl.pallas_call(
        functools.partial(gemm, k_dim=hp, block_n=project_n,
                          sub_tiles=sub_tiles(project_n, lc.block_n, lc.column_split),
                          epilogue="project"),
        out_shape=jax.ShapeDtypeStruct((total_rows, c), dtype),
        grid=(grid_m, cp // project_n),
        input_output_aliases=aliases,
        compiler_params=compiler(num_warps=lc.num_warps),
        interpret=opts.interpret, name=f"conv_first_block_project_{name}",
    )(*args)
    return out.reshape(x.shape)
