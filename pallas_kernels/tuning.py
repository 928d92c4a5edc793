"""Launch parameters of the fused conv-first block kernel: ONE table plus a default rule.

Every launch choice of :func:`pallas_kernels.conv_first_block` (pixel tile, hidden chunk,
``num_warps``, ``num_stages``) comes from :func:`launch_config`, which looks the configuration
up in :data:`LAUNCH_TABLE` and falls back to :func:`default_launch_config`.  GPU tuning
therefore edits data (add a row to the table), never kernel code.

Key: ``(c_padded, kernel_size, group_width, hidden, dtype_name)`` where ``c_padded`` is the
channel count padded to the power of two the kernel works on (>= 16), ``hidden`` the real
hidden width E*C, and ``dtype_name`` the activation dtype (``"float32"``, ``"bfloat16"``,
``"float16"``).

Register/shared-memory budget behind the default rule (one program = one tile of ``tile``
output pixels with all ``c_padded`` channels; Lavin 2024, "block fusion"):

* two f32 accumulators of ``tile x c_padded`` (conv output y and projection z) live in
  registers for the whole program, so ``tile * c_padded`` is capped at 8192 elements (32
  registers per thread each at 8 warps), except at c_padded = 1024 where the tile cannot
  shrink below Triton's dot minimum 16; 8 warps above 4096 elements, else 4;
* per hidden chunk the expand weights ``(c_padded, hidden_chunk)`` and project weights
  ``(hidden_chunk, c_padded)`` are staged through shared memory: ``hidden_chunk`` (<= 128) is
  sized so both fit in 32 KiB, and then 2 pipeline stages are used; when even
  hidden_chunk = 16 does not fit (c_padded >= 512 in float32, 1024 in bfloat16: 64-128 KiB)
  a single stage is used -- those blocks are shared-memory bound, bfloat16 is the intended
  fast path;
* group_width 8 halves tiles above 32 (8x the CUDA-core FMAs and gathers per tap);
* every dot dimension is >= 16 (Triton ``tl.dot`` minimum) and a power of two.

These defaults are educated guesses, not measurements; the table rows come from a sweep with
the static H100 model (``scripts/sweep_launch_static.py``), also not measurements, and are
meant to be replaced by GPU sweeps (``convfirst_jax.bench``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

# Triton's tl.dot needs every dimension >= 16.
MIN_DOT_DIM = 16
# Register budget: elements of each of the two (tile, c_padded) f32 accumulators.
ACC_ELEMENTS = 8192
# Shared-memory budget of one pipeline stage of expand + project weight chunks.
STAGE_BYTES = 32 * 1024
# Small inputs (batch 1): the tile is halved (down to MIN_DOT_DIM) until the grid has at least
# this many programs -- one per SM of a 132-SM H100 plus headroom, so more than one wave.
MIN_PROGRAMS = 160
# Small inputs whose 16-pixel tiles still give too few programs split the hidden dim over a
# second grid axis (LaunchConfig.hidden_parts) until the grid has this many warps: 32
# resident warps (half the 64 warp slots) on each of the H100's 132 SMs, more than the
# 16-pixel batch-1 kernels reach in the static H100 model (1-5 CTAs per SM of 8 warps, up to
# 6 of 4 warps, by registers; ``python -m convfirst_jax.bench static --preset brief --batch
# 1``), so more than one wave: 528 programs of 8 warps, 1056 of 4.
HIDDEN_PARTS_MIN_WARPS = 32 * 132
# Hidden chunks per part at least: with one, the chunk loop is gone and the conv and the MLP
# are scheduled as one block: 255 registers and spills in the static H100 model (C128 28 x 28
# k3 affine-SiLU batch 1, 16 parts of one 32-wide chunk: 32 bytes, 1 CTA per SM; two 16-wide
# chunks: 73 registers, 3 CTAs per SM).
MIN_PART_CHUNKS = 2
# Hidden parts are used only where they pay in the static H100 model charged for whole waves
# (batch 1, docs/results/static-h100/hidden_parts_n1_{off,on}.json): every part recomputes the
# conv + norm of its tile, so they need (a) fewer 16-pixel tiles than SMs (C64 56 x 56 has 196
# tiles: 8.3 -> 10.1 us LN-GELU k3, 12.0 -> 19.5 k7, SMs were not idle) and (b) a conv cheap
# next to the MLP: k^2 * group_width <= PARTS_MAX_CONV_RATIO * c_padded (conv MACs / MLP MACs
# = k^2 gw / (8 Cp) <= 2.5 %). Paid: C128 k3 (20.9 -> 11.5, 13.9 -> 8.7 us), C256 / C512
# depthwise (32.9-78.3 -> 7.9-21.0); not paid: C128 k7 (16.2 -> 22-29), every gw8 block
# (e.g. C64 k7 20.4 -> 46.9, C256 k7 36.1 -> 79.4).
PARTS_MAX_TILES = 132
PARTS_MAX_CONV_RATIO = 0.2


def check_launch_fields(cfg: Any, *, counts: tuple[str, ...] = (),
                        dot_dims: tuple[str, ...] = (), warps: tuple[str, ...] = (),
                        stages: tuple[str, ...] = ()) -> None:
    """One ValueError naming the first bad field of a launch config: ``counts`` powers of two
    >= 1, ``dot_dims`` powers of two >= :data:`MIN_DOT_DIM` (Triton dot and block shapes),
    ``warps`` in 1, 2, 4, 8, 16, ``stages`` >= 1."""
    name = type(cfg).__name__
    for field in counts:
        v = getattr(cfg, field)
        if v < 1 or v & (v - 1):
            raise ValueError(f"{name}.{field}={v} must be a power of two >= 1")
    for field in dot_dims:
        v = getattr(cfg, field)
        if v < MIN_DOT_DIM or v & (v - 1):
            raise ValueError(f"{name}.{field}={v} must be a power of two >= {MIN_DOT_DIM} "
                             "(Triton dot and block-size constraint)")
    for field in warps:
        if getattr(cfg, field) not in (1, 2, 4, 8, 16):
            raise ValueError(f"{name}.{field}={getattr(cfg, field)} must be 1, 2, 4, 8 or 16")
    for field in stages:
        if getattr(cfg, field) < 1:
            raise ValueError(f"{name}.{field}={getattr(cfg, field)} must be >= 1")


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Launch parameters of one fused-block pallas_call.

    Attributes:
      tile: output pixels per program (power of two, >= 16): the M dim of both 1x1 matmuls.
      hidden_chunk: width HC of one chunk of the E*C hidden dim (power of two, >= 16); the
        kernel loops over ceil(E*C / HC) chunks so only a (tile, HC) slice of the hidden
        activations is ever live.
      num_warps: Triton warps per program.
      num_stages: Triton software-pipelining depth of the hidden-chunk loop.
      hidden_parts: G, a power of two: 1 (one program per tile does all hidden chunks and
        the epilogue) or G > 1 (small calls, :func:`hidden_parts`): a second grid axis of G
        programs per tile, part g doing the conv + norm of its tile and hidden chunks
        ``[g * n / G, (g + 1) * n / G)``, writing its f32 partial projection; the partials
        are summed in a fixed order and the epilogue applied afterwards
        (:func:`pallas_kernels.mlp_stage.sum_parts_epilogue`).
    """

    tile: int
    hidden_chunk: int
    num_warps: int = 4
    num_stages: int = 2
    hidden_parts: int = 1

    def __post_init__(self):
        check_launch_fields(self, counts=("hidden_parts",), dot_dims=("tile", "hidden_chunk"),
                            warps=("num_warps",), stages=("num_stages",))


LaunchKey = tuple[int, int, int, int, str]

# Overrides: (c_padded, kernel_size, group_width, hidden, dtype_name) -> LaunchConfig.
# The rows below come from the STATIC H100 model, not from measurements: the best spill-free
# candidate of `scripts/sweep_launch_static.py` (tile x hidden chunk x warps, batch 128,
# bfloat16; gw1 rows must be spill-free for both the ConvNeXt LN-GELU and the ConvFirst
# affine-SiLU block, gw8 rows for the affine-SiLU block; comment = modelled "overlap" times,
# docs/results/static-h100/launch_sweep_gw*.json, rerun on the v6 kernels (bf16 activations
# with one MUFU.TANH) with the static compile's TTIR passes and tiles up to 256; v5 moved the
# C64 gw8 rows from 128-pixel tiles at 4 warps to 256 at 8: k3 66.9 -> 65.6 us, k7 150 -> 147;
# v6 moved C64 k3 to hidden chunks of 64, since at 128 the affine-SiLU block now spills 4 B at
# 255 registers, and C128 k3 to chunks of 32: the same 45.5 us overlap, 0.5 us less serial
# time summed over both blocks, the sweep's tie-break; C64 k7 gw8 back to 128-pixel tiles,
# 142 -> 130 us, and C256 k7 gw8 to chunks of 32, a tie). Keys that take the split plan
# (block_plan: C >= 256 depthwise, C >= 512 grouped) have no row here: they use
# SPLIT_LAUNCH_TABLE / its default rule. Replace them with GPU measurements when a GPU runs.
LAUNCH_TABLE: dict[LaunchKey, LaunchConfig] = {
    (64, 3, 1, 256, "bfloat16"): LaunchConfig(256, 64, 8, 2),  # 60, 46 us
    (64, 3, 8, 256, "bfloat16"): LaunchConfig(256, 128, 8, 2),  # 58 us
    (64, 7, 1, 256, "bfloat16"): LaunchConfig(256, 128, 8, 2),  # 111, 97 us
    (64, 7, 8, 256, "bfloat16"): LaunchConfig(128, 64, 8, 2),  # 130 us
    (128, 3, 1, 512, "bfloat16"): LaunchConfig(128, 32, 8, 2),  # 45, 45 us
    (128, 3, 8, 512, "bfloat16"): LaunchConfig(128, 64, 8, 2),  # 50 us
    (128, 7, 1, 512, "bfloat16"): LaunchConfig(128, 128, 8, 2),  # 64, 56 us
    (128, 7, 8, 512, "bfloat16"): LaunchConfig(128, 128, 8, 2),  # 86 us
    (256, 3, 8, 1024, "bfloat16"): LaunchConfig(64, 32, 8, 2),  # 84 us
    (256, 7, 8, 1024, "bfloat16"): LaunchConfig(64, 32, 8, 2),  # 110 us
}


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def padded_channels(channels: int) -> int:
    """Channel count the kernel computes on: next power of two, at least 16 (Triton dots)."""
    return max(MIN_DOT_DIM, next_power_of_2(channels))


def default_launch_config(c_padded: int, kernel_size: int, group_width: int, hidden: int,
                          dtype_name: str) -> LaunchConfig:
    """The default rule used when :data:`LAUNCH_TABLE` has no entry (see module docstring)."""
    del kernel_size  # The default rule only budgets registers and shared memory.
    itemsize = np.dtype(jnp.dtype(dtype_name)).itemsize
    tile = int(np.clip(ACC_ELEMENTS // c_padded, MIN_DOT_DIM, 128))
    # Grouped convs (group_width 8) do 8x the CUDA-core FMAs per tap: smaller tiles keep the
    # gathered operands in registers.
    if group_width > 1 and tile > 32:
        tile //= 2
    # Expand + project weight chunks: 2 * c_padded * hidden_chunk * itemsize bytes per
    # pipeline stage.
    hidden_chunk = int(np.clip(STAGE_BYTES // (2 * c_padded * itemsize), MIN_DOT_DIM, 128))
    hidden_chunk = max(MIN_DOT_DIM, min(hidden_chunk, next_power_of_2(hidden)))
    num_stages = 2 if 2 * c_padded * hidden_chunk * itemsize <= STAGE_BYTES else 1
    num_warps = 4 if tile * c_padded <= 4096 else 8
    return LaunchConfig(tile=tile, hidden_chunk=hidden_chunk, num_warps=num_warps,
                        num_stages=num_stages)


def launch_config(c_padded: int, kernel_size: int, group_width: int, hidden: int,
                  dtype_name: str, rows: int | None = None) -> LaunchConfig:
    """Launch parameters for one configuration: the table entry if any, else the default rule.

    ``rows`` (optional): the number of output pixels N*H*W of the call. When the chosen tile
    gives fewer than :data:`MIN_PROGRAMS` programs, the tile is halved (not below
    ``MIN_DOT_DIM``) so small batches still spread over the SMs; smaller tiles only lower the
    register and shared-memory use, so the entry stays valid. Then the hidden dim is split
    over ``hidden_parts`` programs per tile (:func:`hidden_parts`). Keys of the split plan
    (:func:`block_plan`) get the default rule here: they run this kernel only for small calls.
    """
    key = (int(c_padded), int(kernel_size), int(group_width), int(hidden), str(dtype_name))
    found = LAUNCH_TABLE.get(key)
    lc = found if found is not None else default_launch_config(*key)
    if rows is not None:
        tile = lc.tile
        while tile > MIN_DOT_DIM and -(-int(rows) // tile) < MIN_PROGRAMS:
            tile //= 2
        tiles = -(-int(rows) // tile)
        parts, chunk = lc.hidden_parts, lc.hidden_chunk
        # small calls: the tile rule had to go down to the dot minimum (or it was there and
        # the tiles are still too few)
        if (tile == MIN_DOT_DIM and (tile < lc.tile or tiles < MIN_PROGRAMS)
                and parts_pay(tiles, c_padded, kernel_size, group_width)):
            parts, chunk = hidden_parts(tiles, int(hidden), lc.hidden_chunk, lc.num_warps)
        if (tile, parts, chunk) != (lc.tile, lc.hidden_parts, lc.hidden_chunk):
            lc = dataclasses.replace(lc, tile=tile, hidden_parts=parts, hidden_chunk=chunk)
    return lc


def parts_pay(tiles: int, c_padded: int, kernel_size: int, group_width: int) -> bool:
    """Whether a small call of ``tiles`` 16-pixel tiles splits its hidden dim over programs:
    fewer tiles than :data:`PARTS_MAX_TILES` and a conv that is cheap to recompute per part
    (``k^2 * group_width <= PARTS_MAX_CONV_RATIO * c_padded``; see the constants)."""
    return (tiles < PARTS_MAX_TILES
            and kernel_size ** 2 * group_width <= PARTS_MAX_CONV_RATIO * c_padded)


def hidden_parts(tiles: int, hidden: int, hidden_chunk: int,
                 num_warps: int) -> tuple[int, int]:
    """``(G, hidden_chunk)`` for a small call's grid of ``tiles`` row tiles of
    ``MIN_DOT_DIM`` pixels and ``num_warps`` warps per program (:func:`launch_config`): the
    smallest power of two G with ``tiles * G * num_warps >=`` :data:`HIDDEN_PARTS_MIN_WARPS`
    (G = 1 when the tiles alone reach it), with the hidden chunk halved (not below
    ``MIN_DOT_DIM``) while the hidden dim has fewer than :data:`MIN_PART_CHUNKS` chunks per
    part, and G capped where even 16-wide chunks do not give every part that many. Each part
    recomputes the conv + norm of its tile (small calls only: batch 1 is a few hundred
    pixels) and writes an f32 partial projection of (tile, c_padded); a smaller chunk only
    lowers the shared-memory use of a pipeline stage, so the entry stays valid."""
    target = -(-HIDDEN_PARTS_MIN_WARPS // num_warps)  # programs
    parts = 1
    while tiles * parts < target:
        if -(-hidden // hidden_chunk) < 2 * MIN_PART_CHUNKS * parts:
            if hidden_chunk == MIN_DOT_DIM:
                break
            hidden_chunk //= 2
            continue
        parts *= 2
    return parts, hidden_chunk


# ---------------------------------------------------------------------------- the split plan
# Wide blocks (see block_plan) run as several kernels instead of one (pallas_kernels.
# split_block): the fused kernel's two (tile, c_padded) f32 accumulators cap its tile at
# 32 / 16 pixels there, so its 1x1 matmuls fall back to mma.sync and every program re-reads
# all of w1 / w2 from L2 (static H100 model, docs/results/static-h100/). The conv + norm kernel
# writes y; then either ONE fused MLP kernel (expand -> act -> project per hidden chunk, h on
# chip, SplitLaunchConfig.fused_mlp) or two GEMMs with h in HBM.
SPLIT_MIN_CHANNELS = 256
# The conv + norm kernel holds one (tile, c_padded) f32 accumulator.
SPLIT_CONV_ELEMENTS = 8192
# ... four times that with row groups (uses_row_groups), at 8 warps: each program loads a
# kernel row's k weight vectors once for all its groups, so larger programs pay. Static H100
# model, bf16 batch 128, conv + norm kernel affine / LayerNorm (whole-row groups): C256 14x14
# k7 tile 32 / 64 / 128 at 8 warps 18.5 / 15.0 / 13.6 and 27.4 / 19.6 / 15.7 µs (4 warps at
# 128: 1020-1112 B of spills); C512 7x7 k7 takes 32 (64 would leave 112 programs, fewer than
# MIN_PROGRAMS): 7.5 / 8.7 µs; 162-243 registers, no spills.
ROW_GROUP_CONV_ELEMENTS = 4 * SPLIT_CONV_ELEMENTS
# ... and twice that for 16-bit grouped convs (their block-diagonal dots), at 4 warps: a
# 16-pixel dot tile split over 8 warps repeats work in every warp. Static H100 model, bf16
# batch 128, C512 7x7 gw8 conv + norm kernel (docs/results/static-h100/split_conv_sweep.json,
# scripts/sweep_split_mlp_static.py --conv): k3 42.5 us at 16 pixels / 8 warps -> 12.8 at 32 / 4,
# k7 134.6 -> 58.6 us (every candidate spills about 500-650 B at 255 registers).
GROUPED_SPLIT_CONV_ELEMENTS = 2 * SPLIT_CONV_ELEMENTS
# With the affine norm (channels independent) that kernel's 16-bit grouped conv runs
# CONV_BLOCK_CHANNELS channels per program over a second grid axis
# (SplitLaunchConfig.conv_channel_blocks) on CONV_BLOCK_TILE-pixel tiles at 4 warps: all
# 512 channels' accumulators of a 32-pixel program spilled 560-640 B at 255 registers and
# were L1-bound. Static H100 model, bf16 batch 128, C512 7x7 gw8 affine-SiLU
# (docs/results/static-h100/split_conv_sweep.json, ``--conv``): conv + norm k3 12.8 -> 5.2 us,
# k7 58.6 -> 28.1 us (78 registers, no spills); the block k3 70.0 -> 62.4, k7 115.9 -> 85.3 us.
CONV_BLOCK_CHANNELS = 32
CONV_BLOCK_TILE = 128


def grouped_on_tensor_cores(dtype: Any, group_width: int) -> bool:
    """Whether a grouped conv runs as block-diagonal tensor-core dots (16-bit dtypes; float32
    stays on exact FMAs, since tensor-core dots of f32 would run in TF32)."""
    return group_width > 1 and jnp.dtype(dtype).itemsize == 2


def split_conv_warps(conv_tile: int, c_padded: int, kernel_size: int, group_width: int,
                     dtype_name: str, under_one_wave: bool = False) -> int:
    """Warps of the split plan's conv + norm kernel: 4 for tiles of at most 4096 elements
    without row groups and for grouped tensor-core convs (a 16-pixel dot tile over 8 warps
    repeats work in every warp), else 8; a grouped grid under one wave takes 8, which finish
    a program sooner (static model, C512 7x7 k7 gw8 at batch 1: 116.6 us against 132.7 at 4
    warps)."""
    if grouped_on_tensor_cores(dtype_name, group_width):
        return 8 if under_one_wave else 4
    small = conv_tile * c_padded <= 4096 and not uses_row_groups(kernel_size, group_width)
    return 4 if small else 8


def uses_row_groups(kernel_size: int, group_width: int) -> bool:
    """Whether the split plan's conv + norm kernel takes row groups
    (:func:`pallas_kernels.conv_stage.row_groups`: depthwise, k >= 5) rather than the fused
    kernel's tiles of column groups (:func:`pallas_kernels.conv_stage.column_block`)."""
    return group_width == 1 and kernel_size >= 5


MIN_GEMM_BLOCK_M = 64  # one Hopper warpgroup MMA is 64 rows
# The fused MLP kernel holds its (block_m, c_padded) f32 project accumulator in registers for
# the whole program: 128 registers per thread at 8 warps.
MLP_ACC_ELEMENTS = 32768
# Below this many programs (one per SM of a 132-SM H100) the fused MLP kernel leaves SMs idle
# (each program does all hidden chunks of its pixels); smaller calls take the two GEMMs, whose
# column tiles spread the same work over more programs.
MLP_MIN_PROGRAMS = 132
# A split-plan GEMM of at least this many rows keeps its column tile; smaller calls halve it
# towards MIN_PROGRAMS programs. Each halving re-reads the whole left operand from L2 once
# more (for the project: the hidden activations, rows x hidden), and the big calls are
# L2-bound: in the static H100 model (2026-12-07, bf16, C512 7x7) the project on 256-column
# tiles takes 29.2 us in 98 programs at batch 128 (6272 rows) against 38.5 us in 196
# programs of 128 columns, and 14.9 us in 50 programs at batch 64 against 29.2 us in 200
# programs of 64 columns; the whole block 72.4 -> 63.1 us (whole waves 86.1 -> 73.5). Under
# it (C512 at batch <= 32, C256 at batch <= 8) halving keeps the whole-wave figure lower
# (C512 gw8 batch 16: 76.2 vs 81.4 us). Table: docs/results/static-h100/gemm_width_probe.md.
GEMM_WIDE_ROWS = 2048


@dataclasses.dataclass(frozen=True)
class SplitLaunchConfig:
    """Launch parameters of the split plan (conv + norm kernel, then the fused MLP kernel or
    the expand and project GEMMs).

    Attributes:
      conv_tile: output pixels per program of the conv + norm kernel (power of two >= 16).
      conv_warps: its Triton warps.
      block_m, block_k: the GEMM tiles' rows (pixels) and reduction step (powers of two
        >= 16), both GEMMs (expand: K = c_padded, project: K = hidden).
      block_n, column_split: the project GEMM's output columns per program and how many f32
        accumulators (a power of two) they are split in; the accumulators share every
        loaded slice of the left operand (the L2 traffic of the wide tile) and run their
        epilogues one after the other (the live registers of a narrow one).
      expand_block_n, expand_split: the same for the expand GEMM.
      num_warps, num_stages: the GEMMs' warps and software-pipelining depth.
      fused_mlp: True: after the conv + norm kernel ONE MLP kernel (programs of
        ``mlp_block_m`` pixels with all channels, a loop over hidden chunks of width
        ``hidden_chunk``: h = act(y @ w1[:, chunk] + b1) on chip, z += h @ w2[chunk, :], the
        project epilogue), so h never reaches HBM and w1 / w2 are read once per program;
        False: the expand and project GEMMs above (h in HBM).
      mlp_block_m, hidden_chunk, mlp_warps, mlp_stages: the fused MLP kernel's pixels per
        program, hidden chunk, warps and software-pipelining depth of the chunk loop.
      mlp_split: its project accumulator as that many (a power of two) of c_padded /
        mlp_split columns (not below 16), sharing each h chunk, their epilogues one after
        the other.
      conv_channel_blocks: the conv + norm kernel's channels over that many programs (a
        second grid axis; a power of two) where its conv is "blockdiag" and its norm affine
        (channels independent); elsewhere 1 is used.
    """

    conv_tile: int
    conv_warps: int = 4
    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    num_warps: int = 8
    num_stages: int = 3
    column_split: int = 1
    expand_block_n: int = 128
    expand_split: int = 1
    fused_mlp: bool = False
    mlp_block_m: int = 128
    hidden_chunk: int = 64
    mlp_warps: int = 8
    mlp_stages: int = 2
    mlp_split: int = 1
    conv_channel_blocks: int = 1

    def __post_init__(self):
        check_launch_fields(
            self, counts=("column_split", "expand_split", "mlp_split", "conv_channel_blocks"),
            dot_dims=("conv_tile", "block_m", "block_n", "block_k", "expand_block_n",
                      "mlp_block_m", "hidden_chunk"),
            warps=("conv_warps", "num_warps", "mlp_warps"), stages=("num_stages", "mlp_stages"))


# Overrides of the split plan's default rule, same key as LAUNCH_TABLE.
SPLIT_LAUNCH_TABLE: dict[LaunchKey, SplitLaunchConfig] = {}


def block_plan(c_padded: int, kernel_size: int, group_width: int, hidden: int,
               dtype_name: str, rows: int | None = None) -> str:
    """"fused" (one kernel, :data:`LAUNCH_TABLE`) or "split" (a conv + norm kernel, then the
    fused MLP kernel or two GEMMs: :data:`SPLIT_LAUNCH_TABLE`) for one configuration:
    depthwise blocks split from :data:`SPLIT_MIN_CHANNELS` padded channels up, grouped
    (width 8) ones from twice that (at 256 channels the fused grouped kernel still runs
    64-pixel tiles and is modelled faster than the split plan, whose conv + norm kernel
    alone costs as much).

    ``rows`` (N*H*W of the call; None: a large call): wide blocks in calls too small for the
    split plan (:func:`split_small_call`) take the fused kernel with its hidden dim split
    over programs (:func:`hidden_parts`), whose grid fills the SMs where the split plan's
    conv + norm kernel cannot (a LayerNorm program needs all channels of its pixels).
    Depthwise blocks only: the fused grouped kernel at 512 channels (32 block-diagonal conv
    slices) spills with hidden parts (static H100 model, C512 7 x 7 gw8 batch 1, 64 parts:
    k3 700 bytes and 31 us "overlap" against 2.7 us for the split plan, k7 10.9 KB and
    806 us), so grouped blocks keep the split plan at every size."""
    del kernel_size, hidden, dtype_name  # the rule only looks at the width
    threshold = SPLIT_MIN_CHANNELS * (1 if group_width == 1 else 2)
    if c_padded < threshold or (group_width == 1 and split_small_call(rows)):
        return "fused"
    return "split"


def split_small_call(rows: int | None) -> bool:
    """True when a call of ``rows`` pixels is too small for the split plan: its conv + norm
    kernel has fewer than :data:`MIN_PROGRAMS` programs even at ``MIN_DOT_DIM``-pixel tiles
    (C256 14 x 14 at batch 1: 13; C512 7 x 7: 4) and its MLP would take the GEMMs for want
    of programs (the fused MLP kernel below :data:`MLP_MIN_PROGRAMS` programs of
    ``MIN_GEMM_BLOCK_M`` pixels, implied by the first with the default constants)."""
    if rows is None:
        return False
    rows = int(rows)
    return (-(-rows // MIN_DOT_DIM) < MIN_PROGRAMS
            and -(-rows // MIN_GEMM_BLOCK_M) < MLP_MIN_PROGRAMS)


def default_split_launch_config(c_padded: int, kernel_size: int, group_width: int,
                                hidden: int, dtype_name: str,
                                norm: str | None = None) -> SplitLaunchConfig:
    """Default rule of the split plan: the conv tile fills :data:`SPLIT_CONV_ELEMENTS`, 8 warps
    above 4096 elements (row groups: :data:`ROW_GROUP_CONV_ELEMENTS`, 8 warps; 16-bit grouped
    convs: :data:`GROUPED_SPLIT_CONV_ELEMENTS`, 4 warps); the GEMMs 8
    warps, 3 stages, block_m 128, block_k 64; the project 256 columns as four 64-column
    accumulators in 16-bit dtypes (one of 128 columns in float32, whose 256-column pipeline
    stages do not fit the shared memory), the expand 256 columns as one accumulator in
    bfloat16, 128 in float16 and float32 (each capped by :func:`gemm_block_n`). The project:
    29.2 us against 38.5 for 128 columns at C512 7 x 7 batch 128 (:data:`GEMM_WIDE_ROWS`); four
    accumulators tie with two in the model at 206 / 174 registers (LN-GELU + layer scale /
    affine-SiLU) against 255 / 178, clear of XLA's Triton allocating ~30 more
    (``scripts/sweep_split_mlp_static.py --project``,
    docs/results/static-h100/split_project_sweep.json). Static H100 model (sm_90a): a 128 x 256
    tile cuts the modelled L2 traffic by a quarter against 128 x 128. With the one-MUFU
    bfloat16 activations the 256-column expand is spill-free at 8 warps (168 / 184 registers,
    LN-GELU / affine-SiLU) and takes the C512 7 x 7 k3 expand from 37.4 to 28.0 us, the block
    81.8 -> 72.4 and 80.2 -> 70.8 us (``scripts/sweep_split_mlp_static.py --gemm``,
    docs/results/static-h100/split_gemm_sweep.json; 16 warps tie at half the registers,
    256-row tiles spill or leave the project under one wave); the float16 / float32
    activations (exact GELU from erfc) spilled at 256 columns in the v4 kernels, so they keep
    128.

    The fused MLP kernel instead of the GEMMs (``fused_mlp``) for 16-bit dtypes where a
    128-pixel project accumulator fits :data:`MLP_ACC_ELEMENTS` (c_padded <= 256): 128
    pixels, 8 warps, hidden chunk 32, 2 stages, the accumulator as 2 x 128 columns. Static
    H100 model, C256 14 x 14 k3 batch 128 bf16 (docs/results/static-h100/split_mlp_sweep.json,
    ``scripts/sweep_split_mlp_static.py``): 50.7 / 50.6 us (LN-GELU /
    affine-SiLU) against 76.4 / 76.3 us for the GEMMs; every 128-pixel candidate with one
    accumulator spills (276-920 bytes), the 2-accumulator ones at 8 warps do not (252-255
    registers); 64-pixel programs double the weight reads from L2 (88 us); 16 warps cap the
    registers at 128 (all spill but one, 63.8 us). The stages tie in the model (L2-bound, 1 stage is
    0.25 us less "serial"); 2 stages are kept for the latency of the weight-chunk loads the
    model does not see. In float32 the y tile and the weight chunks take twice the shared
    memory. At c_padded 512 the accumulator allows 64-pixel programs only: 98 at batch 128,
    7 x 7 (fewer than the SMs, :data:`MLP_MIN_PROGRAMS`), each reading all 4 MB of w1 + w2,
    and every candidate spills (620-9404 bytes) for no modelled gain (>= 81.4 / 82.9 us
    against 80.2 / 81.8 us for the GEMMs), so the GEMMs stay."""
    conv_elements = (ROW_GROUP_CONV_ELEMENTS if uses_row_groups(kernel_size, group_width) else
                     GROUPED_SPLIT_CONV_ELEMENTS
                     if grouped_on_tensor_cores(dtype_name, group_width)
                     else SPLIT_CONV_ELEMENTS)
    conv_tile = int(np.clip(conv_elements // c_padded, MIN_DOT_DIM, 128))
    conv_warps = split_conv_warps(conv_tile, c_padded, kernel_size, group_width, dtype_name)
    channel_blocks = 1
    if channel_blocked(c_padded, group_width, dtype_name, norm):
        conv_tile, conv_warps = CONV_BLOCK_TILE, 4
        channel_blocks = c_padded // CONV_BLOCK_CHANNELS
    block_k = min(64, next_power_of_2(hidden), c_padded)
    mlp_block_m = 128
    fused_mlp = (jnp.dtype(dtype_name).itemsize == 2
                 and mlp_block_m * c_padded <= MLP_ACC_ELEMENTS)
    return SplitLaunchConfig(conv_tile=conv_tile, conv_warps=conv_warps,
                             conv_channel_blocks=channel_blocks,
                             block_n=128 if dtype_name == "float32" else 256,
                             column_split=1 if dtype_name == "float32" else 4,
                             expand_block_n=256 if dtype_name == "bfloat16" else 128,
                             block_k=max(MIN_DOT_DIM, block_k),
                             fused_mlp=fused_mlp,
                             mlp_block_m=mlp_block_m,
                             hidden_chunk=max(MIN_DOT_DIM, min(32, next_power_of_2(hidden))),
                             mlp_warps=8, mlp_stages=2, mlp_split=2)


def channel_blocked(c_padded: int, group_width: int, dtype_name: str, norm: str | None) -> bool:
    """Whether the default rule spreads the conv + norm kernel's channels over programs
    (:data:`CONV_BLOCK_CHANNELS`): 16-bit grouped convs (block-diagonal dots) with the affine
    norm, wider than one block."""
    return (norm == "affine" and grouped_on_tensor_cores(dtype_name, group_width)
            and c_padded > CONV_BLOCK_CHANNELS)


def conv_channel_blocks(lc: SplitLaunchConfig, dtype: Any, group_width: int,
                        norm: str | None, n_parts: int) -> int:
    """Programs along the channels of the split plan's conv + norm kernel:
    ``lc.conv_channel_blocks`` for a grouped conv on tensor cores (the "blockdiag" mode of
    ``conv_stage.conv_mode``, :func:`grouped_on_tensor_cores`) with the affine norm (capped
    at the number of 16-channel parts), else 1 (LayerNorm needs every channel of a pixel in
    one program)."""
    if not grouped_on_tensor_cores(dtype, group_width) or norm != "affine":
        return 1
    return max(1, min(lc.conv_channel_blocks, n_parts))


def split_launch_config(c_padded: int, kernel_size: int, group_width: int, hidden: int,
                        dtype_name: str, rows: int | None = None,
                        norm: str | None = None) -> SplitLaunchConfig:
    """The split plan's launch parameters: table entry or default rule (``norm`` "affine"
    lets 16-bit grouped convs spread their channels over programs, :func:`channel_blocked`;
    None = as for LayerNorm); with ``rows`` (N*H*W) small calls get smaller tiles: the conv
    tile halved until its grid (times its :func:`conv_channel_blocks`) has
    :data:`MIN_PROGRAMS` programs, block_m down to :data:`MIN_GEMM_BLOCK_M` while half of it
    still covers ``rows`` (each GEMM's block_n: :func:`gemm_block_n`); the GEMMs instead of
    the fused MLP kernel (``fused_mlp`` False) when its programs of ``mlp_block_m`` pixels
    are fewer than :data:`MLP_MIN_PROGRAMS`. Smaller fused-MLP programs would re-read all of
    w1 / w2 for every one of them: in the static H100 model (2026-12-07, bf16, C256 14 x 14
    k3, batch 64) 64-pixel fused-MLP programs take the block to 44.0 us (whole waves 59.2)
    against 33.5 us (40.4) for the GEMMs, while at batch 128 the 128-pixel fused MLP stays
    ahead, 50.6 against 66.9 us (``scripts/sweep_split_mlp_static.py --mlp-form``,
    docs/results/static-h100/mlp_form_probe.json)."""
    key = (int(c_padded), int(kernel_size), int(group_width), int(hidden), str(dtype_name))
    found = SPLIT_LAUNCH_TABLE.get(key)
    lc = found if found is not None else default_split_launch_config(*key, norm=norm)
    if rows is None:
        return lc
    rows = int(rows)
    conv_tile = lc.conv_tile
    blocks = conv_channel_blocks(lc, dtype_name, group_width, norm, c_padded // MIN_DOT_DIM)
    while conv_tile > MIN_DOT_DIM and -(-rows // conv_tile) * blocks < MIN_PROGRAMS:
        conv_tile //= 2
    conv_warps = lc.conv_warps
    if found is None and -(-rows // conv_tile) * blocks < MIN_PROGRAMS:
        conv_warps = split_conv_warps(lc.conv_tile, c_padded, kernel_size, group_width,
                                      dtype_name, under_one_wave=True)
    block_m = lc.block_m
    while block_m > MIN_GEMM_BLOCK_M and block_m // 2 >= rows:
        block_m //= 2
    fused_mlp = lc.fused_mlp and -(-rows // lc.mlp_block_m) >= MLP_MIN_PROGRAMS
    return dataclasses.replace(lc, conv_tile=conv_tile, conv_warps=conv_warps, block_m=block_m,
                               fused_mlp=fused_mlp)


def gemm_block_n(block_n: int, block_m: int, rows: int, n_dim: int) -> int:
    """Output-column tile of one split-plan GEMM with ``n_dim`` (padded) columns: ``block_n``
    capped at ``n_dim``; for calls of fewer than :data:`GEMM_WIDE_ROWS` rows halved (not below
    32) until the GEMM has :data:`MIN_PROGRAMS` programs, so small calls spread over the SMs
    while the L2-bound big ones keep wide tiles (each halving re-reads the left operand)."""
    block_n = min(block_n, next_power_of_2(n_dim))
    if rows >= GEMM_WIDE_ROWS:
        return block_n
    while block_n > 2 * MIN_DOT_DIM and -(-rows // block_m) * -(-n_dim // block_n) < MIN_PROGRAMS:
        block_n //= 2
    return block_n
