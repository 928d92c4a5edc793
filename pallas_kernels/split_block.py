"""The split plan of the conv-first block for wide blocks: two or three Pallas (Triton) kernels.

The fused kernel (:mod:`pallas_kernels.fused_block`) keeps a (tile, C) f32 conv output and a
(tile, C) f32 projection accumulator in registers for the whole program; at C >= 256 that caps
its tile at 32 / 16 pixels, so both 1x1 matmuls run as mma.sync with M = 16-32 and every
program re-reads all of w1 and w2 (4 C^2 x 2 bytes each) from L2: at C = 512, 7 x 7, batch 128
that is ~1.6 GB of L2 traffic for 26 GFLOP (static H100 model, docs/results/static-h100/). Here
the conv + norm stage is a kernel of its own::

    y   = norm(dwconv(x) + conv_b)           # conv_norm kernel: tiles of pixels, all C

with y in HBM in the compute dtype, and the MLP runs in one of two forms
(:attr:`pallas_kernels.tuning.SplitLaunchConfig.fused_mlp`):

* fused MLP (:data:`FUSED_MLP_KERNELS`): ONE kernel, programs of ``mlp_block_m`` pixels with
  all channels; per hidden chunk ``h = act(y @ w1[:, chunk] + b1)`` stays on chip and
  ``z += h @ w2[chunk, :]``, then ``out = x + bs[n] * ls * (z + b2)``
  (:mod:`pallas_kernels.mlp_stage`, the fused kernel's own MLP loop and epilogue; Lavin 2024
  "block fusion" of the MLP). Without y's conv accumulator the program has room for 128-pixel
  wgmma tiles at C = 256; each program reads w1 + w2 once from L2 and h never reaches HBM.
* two GEMMs (:data:`SPLIT_KERNELS`)::

    h   = act(y @ w1 + b1)                   # expand GEMM, (block_m, block_n) output tiles
    out = x + bs[n] * ls * (h @ w2 + b2)     # project GEMM, residual / scales in its epilogue

  with h in HBM too: 2 * (C + 4 C) * 2 bytes per pixel of y and h written and read in
  bfloat16, 64 MB (21 µs at 3 TB/s) at C = 512, 7 x 7, batch 128, against ~1.6 GB of L2
  traffic saved. The GEMMs are the classic Triton form (Tillet et al. 2019): a K loop of
  (block_m, block_k) @ (block_k, block_n) dots, software-pipelined (``num_stages``), f32
  accumulator of one output tile. Taken where the fused MLP's (mlp_block_m, C) f32
  accumulator does not fit a wide enough tile (C = 512) or the call has too few pixels to
  give every SM a program (small batches; depthwise blocks in calls too small for this plan
  take the fused kernel with its hidden dim split over programs instead:
  :func:`pallas_kernels.tuning.split_small_call`).

The numerics are the fused kernel's in both forms: y and h are rounded to the compute dtype
before the dots (f32 accumulation, f32 activation), so only the f32 summation order inside
the dots differs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.activations import kernel_activation, kernel_hidden_scale
from pallas_kernels.conv_stage import (conv_mode, conv_norm_row_groups, conv_norm_tile,
                                       prepare_conv_operands, row_groups)
from pallas_kernels.mlp_stage import mlp_tile, project_epilogue
from pallas_kernels.operands import mlp_operands
from pallas_kernels.options import BlockOptions
from pallas_kernels.tuning import (MIN_DOT_DIM, SplitLaunchConfig, conv_channel_blocks,
                                   gemm_block_n, padded_channels, split_launch_config,
                                   uses_row_groups)

_F32 = jnp.float32

#: The kernels of the split plan with the two GEMMs, in launch order (pallas_call names carry
#: these), and with the fused MLP kernel (SplitLaunchConfig.fused_mlp).
SPLIT_KERNELS = ("conv_norm", "expand", "project")
FUSED_MLP_KERNELS = ("conv_norm", "mlp")


def split_kernels(lc: SplitLaunchConfig) -> tuple[str, ...]:
    """The kernels one split-plan call with launch parameters ``lc`` launches, in order."""
    return FUSED_MLP_KERNELS if lc.fused_mlp else SPLIT_KERNELS


def _store_y(y_ref, ys: list[jax.Array], rows: jax.Array, row_ok: jax.Array, mode: str,
             part0: Any = 0):
    """Stores the P parts of y for pixels ``rows``; paired bfloat16 as uint32 channel pairs
    (even channel in the low half, odd in the high half, as loaded; ``y_ref`` is then the
    (rows, Cp / 2) uint32 view of y)."""
    cpart = ys[0].shape[1]
    if mode == "paired":
        even, odd = (lax.bitcast_convert_type(y, jnp.uint16).astype(jnp.uint32) for y in ys)
        cols = jnp.arange(cpart, dtype=jnp.int32)
        plgpu.store(y_ref.at[rows[:, None], cols[None, :]],
                    even | lax.shift_left(odd, jnp.uint32(16)), mask=row_ok[:, None])
        return
    for p, y in enumerate(ys):  # part p0 + p = channels [(p0 + p) cpart, (p0 + p + 1) cpart)
        cols = (part0 + p) * cpart + jnp.arange(cpart, dtype=jnp.int32)
        plgpu.store(y_ref.at[rows[:, None], cols[None, :]], y, mask=row_ok[:, None])


def _conv_norm_kernel(x_ref, xp_ref, cw_ref, cb_ref, ns_ref, nb_ref, y_ref, *, height: int,
                      width: int, channels: int, total_rows: int, tile: int,
                      kernel_size: int, group_width: int, norm: str, eps: float, mode: str,
                      channel_blocks: int = 1):
    """y = norm(dwconv(x) + conv_b), all ``Cp`` channels, in the compute dtype (padded
    channels 0). Depthwise k >= 5 (:func:`pallas_kernels.tuning.uses_row_groups`):
    ``G`` row groups of ``M`` pixels per program (``row_groups`` of ``tile``), y stored one
    group member at a time; otherwise ``tile`` consecutive flattened pixels, as in the fused
    kernel. ``channel_blocks`` > 1 (blockdiag grouped convs with the affine norm): program
    (i, j) computes the j-th of that many equal blocks of the channel parts."""
    if uses_row_groups(kernel_size, group_width):
        m_block, n_groups = row_groups(width, tile)
        start = (pl.program_id(0) * n_groups + jnp.arange(n_groups, dtype=jnp.int32)) * m_block
        ok = start < total_rows  # M divides W, so a group is inside the pixels or past them
        members = conv_norm_row_groups(
            x_ref, xp_ref, cw_ref, cb_ref, ns_ref, nb_ref, start=start, ok=ok,
            m_block=m_block, height=height, width=width, channels=channels,
            kernel_size=kernel_size, norm=norm, eps=eps, mode=mode, compute_dtype=x_ref.dtype)
        for m, ys in enumerate(members):
            _store_y(y_ref, ys, start + m, ok, mode)
        return
    rows = pl.program_id(0) * tile + jnp.arange(tile, dtype=jnp.int32)
    row_ok = rows < total_rows
    blocked = channel_blocks > 1
    n_local = cb_ref.shape[0] // channel_blocks
    part0 = pl.program_id(1) * n_local if blocked else 0
    ys = conv_norm_tile(x_ref, xp_ref, cw_ref, cb_ref, ns_ref, nb_ref, rows=rows,
                        row_ok=row_ok, height=height, width=width, channels=channels,
                        kernel_size=kernel_size, group_width=group_width, norm=norm, eps=eps,
                        mode=mode, compute_dtype=x_ref.dtype, part0=part0,
                        n_local=n_local if blocked else None)
    _store_y(y_ref, ys, rows, row_ok, mode, part0=part0)


def conv_norm_pixels(width: int, conv_tile: int, kernel_size: int, group_width: int) -> int:
    """Output pixels per program of the split plan's conv + norm kernel: ``G M`` of
    :func:`pallas_kernels.conv_stage.row_groups` where it takes row groups, else
    ``conv_tile``."""
    if not uses_row_groups(kernel_size, group_width):
        return conv_tile
    m_block, n_groups = row_groups(width, conv_tile)
    return m_block * n_groups


def _gemm_kernel(a_ref, b_ref, bias_ref, *rest, total_rows: int, k_dim: int, block_m: int,
                 block_n: int, block_k: int, sub_tiles: int, epilogue: str,
                 act: Callable[[jax.Array], jax.Array],
                 channels: int, pixels_per_image: int, has_layer_scale: bool,
                 has_branch_scale: bool):
    """One (block_m, block_n) tile of ``a @ b`` (f32 accumulation over a K loop) and its
    epilogue: "expand" ``act(acc + b1)`` -> compute dtype; "project"
    ``x + bs[n] * ls * (acc + b2)`` (:func:`pallas_kernels.mlp_stage.project_epilogue`;
    ``rest`` = x, layer scale, branch scale[, init], out).

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
        if epilogue == "project":
            x_ref, ls_ref, bs_ref = rest[:3]
            project_epilogue(acc, x_ref, bias_ref, ls_ref, bs_ref, o_ref, rows=rows,
                             row_ok=row_ok, col0=c0, channels=channels,
                             pixels_per_image=pixels_per_image,
                             has_layer_scale=has_layer_scale,
                             has_branch_scale=has_branch_scale)
            continue
        cols = c0 + jnp.arange(sub_n, dtype=jnp.int32)
        h = act(acc + bias_ref[pl.ds(c0, sub_n)][None, :])
        plgpu.store(o_ref.at[rows[:, None], cols[None, :]], h.astype(o_ref.dtype),
                    mask=row_ok[:, None])


def _mlp_kernel(y_ref, w1_ref, b1_ref, w2_ref, b2_ref, x_ref, ls_ref, bs_ref, *rest,
                total_rows: int, block_m: int, hidden_chunk: int, n_chunks: int,
                out_split: int, act: Callable[[jax.Array], jax.Array], channels: int,
                pixels_per_image: int,
                has_layer_scale: bool, has_branch_scale: bool):
    """The fused MLP kernel: ``block_m`` rows of y (rows, Cp) with all channels, loaded once;
    :func:`pallas_kernels.mlp_stage.mlp_tile` over the hidden chunks (h on chip; ``w1_ref``
    (1, Cp, Hp): one part; ``out_split`` accumulators) and
    :func:`pallas_kernels.mlp_stage.project_epilogue` per accumulator (``rest`` = [aliased
    init,] out)."""
    o_ref = rest[-1]
    rows = pl.program_id(0) * block_m + jnp.arange(block_m, dtype=jnp.int32)
    row_ok = rows < total_rows
    cols = jnp.arange(y_ref.shape[1], dtype=jnp.int32)
    y = plgpu.load(y_ref.at[rows[:, None], cols[None, :]], mask=row_ok[:, None], other=0.0)
    zs = mlp_tile((y,), w1_ref, b1_ref, w2_ref, hidden_chunk=hidden_chunk, n_chunks=n_chunks,
                  act=act, compute_dtype=y_ref.dtype, out_split=out_split)
    for s, z in enumerate(zs):
        project_epilogue(z, x_ref, b2_ref, ls_ref, bs_ref, o_ref, rows=rows, row_ok=row_ok,
                         col0=s * z.shape[1], channels=channels,
                         pixels_per_image=pixels_per_image, has_layer_scale=has_layer_scale,
                         has_branch_scale=has_branch_scale)


def split_launch(x_shape: tuple[int, ...], x_dtype: Any, params: Mapping[str, Any],
                 kernel_size: int, group_width: int, norm: str) -> SplitLaunchConfig:
    """The split plan's launch parameters for one call (table entry or default rule)."""
    n, h, w, c = x_shape
    return split_launch_config(padded_channels(c), kernel_size, group_width,
                               params["w1"].shape[1], jnp.dtype(x_dtype).name, rows=n * h * w,
                               norm=norm)


def split_forward(x: jax.Array, params: Mapping[str, Any], opts: BlockOptions,
                  branch_scale: jax.Array | None, out_init: jax.Array | None) -> jax.Array:
    """The block as two or three ``pallas_call`` s (see the module docstring, the form from
    :func:`split_launch`); ``opts.interpret``
    a bool, ``params`` validated; ``out_init`` is aliased to the output (see
    :func:`pallas_kernels.fused_block.fused_forward`)."""
    n, hgt, wid, c = x.shape
    cp = padded_channels(c)
    total_rows = n * hgt * wid
    dtype = x.dtype
    lc = split_launch(x.shape, dtype, params, opts.kernel_size, opts.group_width, opts.norm)
    mode = conv_mode(dtype, c, opts.group_width)
    compiler = functools.partial(plgpu.CompilerParams, num_stages=lc.num_stages)
    x2 = x.reshape(total_rows, c)
    name = f"k{opts.kernel_size}_gw{opts.group_width}"
    act = kernel_activation(opts.activation, triton=not opts.interpret, dtype=dtype)
    hidden_scale = kernel_hidden_scale(opts.activation, dtype)  # act = hidden_scale * activation

    # 1. y = norm(dwconv(x) + conv_b), (rows, Cp) in x.dtype
    conv_ops = prepare_conv_operands(x, params, mode)
    y_shape = ((total_rows, cp // 2), jnp.uint32) if mode == "paired" else ((total_rows, cp),
                                                                            dtype)
    channel_blocks = conv_channel_blocks(lc, dtype, opts.group_width, opts.norm,
                                         conv_ops[2].shape[0])
    y = pl.pallas_call(
        functools.partial(_conv_norm_kernel, height=hgt, width=wid, channels=c,
                          total_rows=total_rows, tile=lc.conv_tile,
                          kernel_size=opts.kernel_size, group_width=opts.group_width,
                          norm=opts.norm, eps=float(opts.eps), mode=mode,
                          channel_blocks=channel_blocks),
        out_shape=jax.ShapeDtypeStruct(*y_shape),
        grid=(pl.cdiv(total_rows, conv_norm_pixels(wid, lc.conv_tile, opts.kernel_size,
                                                   opts.group_width)), channel_blocks),
        compiler_params=plgpu.CompilerParams(num_warps=lc.conv_warps, num_stages=1),
        interpret=opts.interpret, name=f"conv_first_block_conv_norm_{name}",
    )(x2, *conv_ops)
    if mode == "paired":
        y = lax.bitcast_convert_type(y, dtype).reshape(total_rows, cp)

    hidden = params["w1"].shape[1]
    has_ls = params.get("layer_scale") is not None
    if lc.fused_mlp:  # 2. out = x + bs * ls * (MLP(y) + b2), one kernel, h on chip
        w1, b1, w2, b2, ls, bs = mlp_operands(x, params, branch_scale, lc.hidden_chunk,
                                              hidden_scale)
        args = (y, w1[None], b1, w2, b2, x2, ls, bs)
        aliases = {}
        if out_init is not None:
            aliases = {len(args): 0}
            args = (*args, out_init.reshape(total_rows, c))
        out = pl.pallas_call(
            functools.partial(_mlp_kernel, total_rows=total_rows, block_m=lc.mlp_block_m,
                              hidden_chunk=lc.hidden_chunk,
                              n_chunks=w1.shape[1] // lc.hidden_chunk,
                              out_split=max(1, cp // max(MIN_DOT_DIM, cp // lc.mlp_split)),
                              act=act, channels=c,
                              pixels_per_image=hgt * wid, has_layer_scale=has_ls,
                              has_branch_scale=branch_scale is not None),
            out_shape=jax.ShapeDtypeStruct((total_rows, c), dtype),
            grid=(pl.cdiv(total_rows, lc.mlp_block_m),),
            input_output_aliases=aliases,
            compiler_params=plgpu.CompilerParams(num_warps=lc.mlp_warps,
                                                 num_stages=lc.mlp_stages),
            interpret=opts.interpret, name=f"conv_first_block_mlp_{name}",
        )(*args)
        return out.reshape(x.shape)

    expand_n = gemm_block_n(lc.expand_block_n, lc.block_m, total_rows, hidden)
    w1, b1, w2, b2, ls, bs = mlp_operands(x, params, branch_scale, max(expand_n, lc.block_k),
                                          hidden_scale)
    hp = w1.shape[1]
    project_n = gemm_block_n(lc.block_n, lc.block_m, total_rows, cp)
    gemm = functools.partial(
        _gemm_kernel, total_rows=total_rows, block_m=lc.block_m, block_k=lc.block_k,
        act=act, channels=c, pixels_per_image=hgt * wid,
        has_layer_scale=has_ls, has_branch_scale=branch_scale is not None)
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
