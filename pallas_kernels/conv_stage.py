"""The conv + norm stage of the conv-first block, shared by the fused and the split kernels.

One program's tile of ``tile`` consecutive rows of the flattened (N*H*W, C) pixels::

    y = sum_{dy,dx,i} x[n, h+dy-k//2, w+dx-k//2, group(c)*gw + i] * conv_w[dy, dx, i, c] + conv_b
    y = norm(y)        # affine (folded BN) or per-pixel LayerNorm over C, then * scale + shift

computed in float32 and returned rounded to the compute dtype (the operand of the 1x1 expand;
Lavin 2024, arXiv 2404.03617, Fig. 1 "conv first"). :func:`conv_norm_tile` is traced inside
a Pallas kernel body; :func:`prepare_conv_operands` builds its operands outside.

Channel-vector operands come as ``(P, Cp / P)`` "parts" (see :data:`CONV_MODES`): "direct"
P = 1; "paired" P = 2, ``xp_ref`` is x viewed as uint32 pairs (even channel in the low half,
odd in the high half), part 0 / 1 = even / odd channels; "blockdiag" P = Cp / 16, part p =
channels [16 p, 16 p + 16), conv weights as 16 x 16 block-diagonal matrices (two 8-channel
groups each) multiplied on the tensor cores.

Grouped schedule: one conv loop step per chunk of ``G`` consecutive taps of a kernel row
(:func:`tap_chunk`; a row is ``n = ceil(k / G)`` chunks, taps dx >= k of the last one have
zero weights and masked loads). "blockdiag" stacks the chunk's G block-diagonal matrices of a
slice into one ``(16 G, 16)`` weight and gathers the ``(tile, 16 G)`` operand whose column
``16 g + l`` is channel ``l`` of the slice at tap ``dx = c G + g``, so a step is one dot per
slice with ``K = 16 G`` instead of G dots, G accumulator adds and G waits (an im2col of
the chunk's taps: Chellapilla, Puri and Simard 2006, "High Performance Convolutional Neural
Networks for Document Processing").

Depthwise schedule (register blocking of output columns, as in direct convolution: Zhang,
Franchetti and Low 2018, "High Performance Zero-Memory Overhead Direct Convolutions", ICML):
the tile is taken as ``tile / M`` groups of ``M`` consecutive output pixels of one image row
(:func:`column_block`). For kernel row dy a group reads the ``M + k - 1`` input pixels
``start + (dy - k//2) W + u - k//2``, u < M + k - 1; each is loaded, widened to f32 and
masked once and feeds the taps (m, dx) with m + dx = u, so a kernel row costs M + k - 1
loads and conversions per group instead of M k. Every output still accumulates its k*k
FMAs in (dy, dx) order, so the sums are the ones of a tap-by-tap loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.operands import f32_vector
from pallas_kernels.tuning import MIN_DOT_DIM, grouped_on_tensor_cores, padded_channels

_F32 = jnp.float32

CONV_MODES = {
    "direct": "depthwise, or grouped in float32: FMAs on the CUDA cores (grouped: one "
              "gather per in-group input)",
    "paired": "bfloat16 depthwise with C a power of two >= 32: uint32 loads of channel "
              "pairs, bf16 -> f32 by a shift / a mask",
    "blockdiag": "grouped (width 8) in bfloat16 / float16: per chunk of G taps of a kernel "
                 "row (G = 2 for k >= 5, 1 for k = 3) and 16-channel slice a (tile, 16 G) @ "
                 "(16 G, 16) block-diagonal tensor-core dot, f32 accumulation",
}


def conv_mode(dtype: Any, channels: int, group_width: int) -> str:
    """Which conv path the kernel takes (see :data:`CONV_MODES`)."""
    dtype = jnp.dtype(dtype)
    if group_width > 1:
        return "blockdiag" if grouped_on_tensor_cores(dtype, group_width) else "direct"
    if (dtype == jnp.bfloat16 and padded_channels(channels) == channels
            and channels >= 2 * MIN_DOT_DIM):
        return "paired"
    return "direct"


# Taps of one kernel row a grouped conv step covers for k >= 5 (K of its dots = 16 G). Static
# H100 model, bf16 gw8 k7 at the current launch table: G = 2 cuts the conv phase of every
# row (fewer dots, waits and accumulator adds per tap); G = 4 needs 2x the pipelined shared
# memory of a step (too much for the C256 14x14 tile-64 row); k = 3 keeps G = 1 (a padded
# pair per kernel row was no faster there).
TAP_CHUNK = 2


def tap_chunk(kernel_size: int) -> int:
    """Taps ``G`` of one kernel row per grouped-conv loop step: :data:`TAP_CHUNK` for k >= 5,
    1 for k <= 3 (a row is ``ceil(k / G)`` steps, the last one padded with zero-weight
    taps)."""
    return TAP_CHUNK if kernel_size >= 5 else 1


def conv_loop_trips(kernel_size: int, group_width: int) -> int:
    """Trip count of the conv loop: 1 = every tap statically unrolled (k = 3 depthwise),
    k = a loop over kernel rows (k >= 5 depthwise), k * ceil(k / G) = one step per chunk of
    :func:`tap_chunk` taps of a kernel row (grouped)."""
    if group_width > 1:
        return kernel_size * -(-kernel_size // tap_chunk(kernel_size))
    return 1 if kernel_size <= 3 else kernel_size


def part_channels(mode: str, part: int, part_width: int) -> jax.Array:
    """Channel index of each lane of part ``part`` (see :data:`CONV_MODES`)."""
    lanes = jnp.arange(part_width, dtype=jnp.int32)
    if mode == "paired":
        return 2 * lanes + part
    return part * part_width + lanes


# Largest column group M (consecutive output pixels sharing their input loads): 8 already
# cuts the loads of a 7-tap kernel row 4x (14 instead of 56 per group).
MAX_COLUMN_BLOCK = 8
# Fewest groups per tile (rows of each load tensor), so one load still spans the threads.
MIN_GROUP_ROWS = 16


def column_block(width: int, tile: int, kernel_size: int, group_width: int,
                 max_block: int = MAX_COLUMN_BLOCK) -> int:
    """Output pixels per column group ``M`` of the depthwise conv (1 = no reuse).

    The tile's ``tile`` consecutive flattened pixels are taken as ``tile / M`` groups of ``M``
    consecutive pixels (module docstring); ``M`` is the largest power of two <=
    :data:`MAX_COLUMN_BLOCK` dividing ``width`` and ``tile`` with >= :data:`MIN_GROUP_ROWS`
    groups. As M divides W and the tile starts at a multiple of M, a group lies in one image
    row, so whether an input pixel of a group is inside the image depends only on its
    column u (and the kernel row), not on which of the group's outputs reads it.
    """
    if group_width > 1 or kernel_size == 1:
        return 1
    m = 1
    while (2 * m <= max_block and width % (2 * m) == 0 and tile % (2 * m) == 0
           and tile // (2 * m) >= MIN_GROUP_ROWS):
        m *= 2
    return m


# Largest row group M of the split plan's conv + norm kernel (:func:`row_groups`). 16 takes
# whole image rows at W = 14 / 7 (C256 / C512), whose column masks are static (see
# :func:`_depthwise_conv`). Static H100 model, bf16 batch 128, conv + norm kernel affine /
# LayerNorm at the default tiles (tuning.ROW_GROUP_CONV_ELEMENTS), against the fused
# kernel's column groups (M = 2 at W = 14, 1 at W = 7): C256 14x14 k7 M = 14 25 -> 14 / 27 ->
# 16 µs (M = 7 at 64-pixel programs: 18 / 20); C512 7x7 k7 M = 7 19 -> 7.5 / 21 -> 8.7 µs.
# k = 3 keeps column groups (C256 LN 9 -> 11 µs with M = 7, 32-pixel programs: three taps
# per row reuse too little to pay for the per-member norm).
MAX_ROW_GROUP = 16


def row_groups(width: int, tile: int, max_block: int = MAX_ROW_GROUP) -> tuple[int, int]:
    """``(M, G)`` of the split plan's depthwise conv + norm kernel
    (:func:`pallas_kernels.tuning.uses_row_groups`):
    each program takes ``G`` (a power of two) groups of ``M`` consecutive output pixels of
    one image row, ``M`` the largest divisor of ``width`` with ``M <= min(max_block, tile /
    2)`` and ``G`` the largest power of two with ``G M <= tile`` (a program has ``G M <=
    tile`` pixels in >= 2 groups).

    The kernel stores y one group member at a time (no (tile, C) tensor is formed), so unlike
    :func:`column_block` ``M`` need not be a power of two: per kernel row a group loads its
    ``M + k - 1`` input pixels once for its ``M k`` taps, and a group of a whole row (M = W)
    only the row's W pixels, for its in-image taps (C256 14x14 k7: 14 loads per 86 taps with
    M = 14 instead of 8 per 14 with the fused kernel's M = 2).
    """
    m = max(d for d in range(1, min(max_block, max(1, tile // 2), width) + 1) if width % d == 0)
    g = 1
    while 2 * g * m <= tile:
        g *= 2
    return m, g


def interleave_rows(parts: list[jax.Array]) -> jax.Array:
    """``out[t * M + m] = parts[m][t]`` for M = len(parts) (a power of two) equal-shape 2-D
    arrays: the inverse of taking every M-th row; pairwise stack / transpose / reshape (the
    ops the Triton lowering supports)."""
    if len(parts) == 1:
        return parts[0]
    even, odd = interleave_rows(parts[0::2]), interleave_rows(parts[1::2])
    r, c = even.shape
    pair = jnp.stack([even, odd], axis=-1)                       # (r, c, 2)
    return jnp.transpose(pair, (0, 2, 1)).reshape(2 * r, c)      # row 2 i + b = (even, odd)[b][i]


def conv_norm_tile(x_ref, xp_ref, cw_ref, cb_ref, ns_ref, nb_ref, *, rows: jax.Array,
                   row_ok: jax.Array, height: int, width: int, channels: int,
                   kernel_size: int, group_width: int, norm: str, eps: float, mode: str,
                   compute_dtype: Any, part0: Any = 0,
                   n_local: int | None = None) -> list[jax.Array]:
    """``norm(dwconv(x) + conv_b)`` of the tile's ``rows`` as P parts ``(tile, Cp / P)`` in
    ``compute_dtype`` (padded lanes exactly 0); traced inside a kernel body.

    ``rows`` must be ``start + arange(tile)`` with ``start`` a multiple of ``tile`` (both
    callers: program id * tile), so column groups never straddle image rows. "SAME" zero
    padding via masks, f32 accumulation in the order (dy, dx) for every output. Tap (dy, dx)
    of output row r reads input row r + (dy - pad) * W + (dx - pad): the same image whenever
    the tap is inside the image, which the row/column masks check. Depthwise: the tile is
    split into column groups of :func:`column_block` pixels, each kernel row's inputs are
    loaded once per group and reused by all taps that read them (module docstring); the
    groups are interleaved back into row order before the norm.

    ``part0`` / ``n_local`` (grouped "blockdiag" convs with the affine norm only, whose parts
    are independent): the ``n_local`` parts from part ``part0`` (a traced int) instead of all.
    """
    n_parts, cpart = cb_ref.shape
    geometry = dict(height=height, width=width, channels=channels, kernel_size=kernel_size,
                    mode=mode, n_parts=n_parts, cpart=cpart)
    if n_local is not None and not (mode == "blockdiag" and norm == "affine"):
        raise ValueError("a block of parts needs the blockdiag conv and the affine norm")
    if group_width > 1:
        groups = [_grouped_conv(x_ref, cw_ref, rows=rows, row_ok=row_ok,
                                group_width=group_width, part0=part0,
                                n_local=n_parts if n_local is None else n_local, **geometry)]
    else:
        m_block = column_block(width, rows.shape[0], kernel_size, group_width)
        groups = _depthwise_conv(x_ref, xp_ref, cw_ref, start=_every_mth(rows, m_block),
                                 ok=_every_mth(row_ok, m_block), m_block=m_block, **geometry)
    # back to the tile's row order (group m holds rows m, m + M, ...)
    ys = [interleave_rows([g[p] for g in groups]) for p in range(len(groups[0]))]
    return bias_norm(ys, cb_ref, ns_ref, nb_ref, channels=channels, norm=norm, eps=eps,
                     mode=mode, compute_dtype=compute_dtype, part0=part0)


def conv_norm_row_groups(x_ref, xp_ref, cw_ref, cb_ref, ns_ref, nb_ref, *, start: jax.Array,
                         ok: jax.Array, m_block: int, height: int, width: int,
                         channels: int, kernel_size: int, norm: str, eps: float, mode: str,
                         compute_dtype: Any) -> list[list[jax.Array]]:
    """Depthwise ``norm(dwconv(x) + conv_b)`` of ``G`` row groups of ``m_block`` pixels
    (:func:`row_groups`; the split plan's conv + norm kernel): group g is pixels
    ``start[g] .. start[g] + M - 1`` of one image row (``ok[g]``: the group exists). Returns
    per member m (< M) the P parts ``(G, Cp / P)`` of pixels ``start + m``; the same sums in
    the same order and the same norm as :func:`conv_norm_tile`."""
    n_parts, cpart = cb_ref.shape
    accs = _depthwise_conv(x_ref, xp_ref, cw_ref, start=start, ok=ok, height=height,
                           width=width, channels=channels, kernel_size=kernel_size,
                           mode=mode, n_parts=n_parts, cpart=cpart, m_block=m_block)
    return [bias_norm(list(member), cb_ref, ns_ref, nb_ref, channels=channels, norm=norm,
                      eps=eps, mode=mode, compute_dtype=compute_dtype) for member in accs]


def bias_norm(ys: list[jax.Array], cb_ref, ns_ref, nb_ref, *, channels: int, norm: str,
              eps: float, mode: str, compute_dtype: Any, part0: Any = 0) -> list[jax.Array]:
    """``norm(y + conv_b)`` of P parts ``(rows, Cp / P)`` f32 of the conv output (one row =
    one pixel, all channels), rounded to ``compute_dtype``: affine (folded BN) or LayerNorm
    over the C real channels, then ``* scale + shift`` (padded lanes exactly 0). With the
    affine norm ``ys`` may be the parts from ``part0`` on only."""
    n_parts, cpart = cb_ref.shape
    pad_channels = n_parts * cpart != channels
    ys = [y + cb_ref[part0 + p, :][None, :] for p, y in enumerate(ys)]
    if norm == "layernorm":  # over the C real channels; padded lanes of y are exactly 0
        mean = sum(jnp.sum(y, axis=1) for y in ys) * (1.0 / channels)
        ys = [y - mean[:, None] for y in ys]
        if pad_channels:
            ys = [jnp.where((part_channels(mode, p, cpart) < channels)[None, :], y, 0.0)
                  for p, y in enumerate(ys)]
        var = sum(jnp.sum(y * y, axis=1) for y in ys) * (1.0 / channels)
        inv = lax.rsqrt(var + eps)[:, None]
        ys = [y * inv for y in ys]
    # padded lanes: scale = shift = 0
    return [(y * ns_ref[part0 + p, :][None, :] + nb_ref[part0 + p, :][None, :]
             ).astype(compute_dtype) for p, y in enumerate(ys)]


def _every_mth(v: jax.Array, m_block: int) -> jax.Array:
    """``v[::M]`` of a 1-D array (reshape + split: strided slices do not lower to Triton)."""
    if m_block == 1:
        return v
    return jnp.split(v.reshape(v.shape[0] // m_block, m_block), m_block, axis=1)[0].reshape(-1)


def _depthwise_conv(x_ref, xp_ref, cw_ref, *, start, ok, height, width, channels,
                    kernel_size, mode, n_parts, cpart, m_block):
    """Depthwise k x k conv of groups of ``M`` consecutive output pixels of one image row
    (``M`` divides W; :func:`column_block`, :func:`row_groups`) starting at pixels
    ``start`` (G,), ``ok`` (G,) whether each group exists: per member m (< M) a tuple of P
    parts ``(G, Cp / P)`` f32 for pixels ``start + m``."""
    cp = n_parts * cpart
    pad = kernel_size // 2
    # the group starts' image row / column
    local = lax.rem(start, height * width)
    ph = lax.div(local, width)
    pw = lax.rem(local, width)
    n_in = m_block + kernel_size - 1
    # a group that is a whole image row (M = W, pw = 0) knows its column masks statically:
    # the inputs left and right of the row are padding, neither loaded nor multiplied (their
    # terms are exact zeros, so every sum is the same)
    whole_row = m_block == width
    # otherwise input column u of a group is pixel start + u - pad: in its image row iff
    col_ok = None if whole_row else [(pw >= pad - u) & (pw < width + pad - u)
                                     for u in range(n_in)]
    ch = jnp.arange(cp, dtype=jnp.int32)
    pad_channels = cp != channels
    ch_ok = (ch < channels)[None, :]
    lanes = jnp.arange(cpart, dtype=jnp.int32)[None, :]

    def load(dy, u, valid):
        src = (start + ((dy - pad) * width + (u - pad)))[:, None]
        if mode == "paired":  # one 32-bit load = two bf16 channels; bf16 -> f32 is a shift
            v = plgpu.load(xp_ref.at[src, lanes], mask=valid[:, None], other=0)
            return (lax.bitcast_convert_type(lax.shift_left(v, jnp.uint32(16)), _F32),
                    lax.bitcast_convert_type(v & jnp.uint32(0xFFFF0000), _F32))
        mask = valid[:, None] & ch_ok if pad_channels else valid[:, None]
        return (plgpu.load(x_ref.at[src, ch[None, :]], mask=mask, other=0.0).astype(_F32),)

    def conv_row(dy, accs):
        row_valid = ok & (ph >= pad - dy) & (ph < height + pad - dy)
        w = [[cw_ref[dy, dx, p, :][None, :] for p in range(n_parts)]
             for dx in range(kernel_size)]
        accs = [list(a) for a in accs]
        for u in range(n_in):
            if whole_row and not 0 <= u - pad < width:
                continue
            xs = load(dy, u, row_valid if whole_row else row_valid & col_ok[u])
            # outputs m = u - dx, dx ascending: each output gets its taps in dx order
            for dx in range(kernel_size):
                m = u - dx
                if 0 <= m < m_block:
                    for p in range(n_parts):
                        accs[m][p] = accs[m][p] + xs[p] * w[dx][p]
        return tuple(tuple(a) for a in accs)

    accs = tuple(tuple(jnp.zeros((start.shape[0], cpart), _F32)
                       for _ in range(n_parts)) for _ in range(m_block))
    if conv_loop_trips(kernel_size, 1) == 1:  # k = 3: every tap statically unrolled
        for dy in range(kernel_size):
            accs = conv_row(dy, accs)
    else:  # k >= 5: one loop step per kernel row, its taps unrolled
        accs = lax.fori_loop(0, kernel_size, conv_row, accs)
    return accs


def _grouped_conv(x_ref, cw_ref, *, rows, row_ok, height, width, channels, kernel_size,
                  mode, n_parts, cpart, group_width, part0=0, n_local=None):
    """Grouped (group width > 1) k x k conv of the tile: P parts ``(tile, Cp / P)`` f32, one
    loop step per chunk of :func:`tap_chunk` taps of a kernel row (module docstring).

    Step (dy, c) covers the taps dx = c G + g, g < G (zero weights and masked loads for
    dx >= k). "blockdiag": per 16-channel slice one ``(tile, 16 G) @ (16 G, 16)`` dot whose
    column 16 g + l is input channel l of the slice at pixel offset (dy, c G + g); "direct":
    the G taps' FMAs, each an in-group gather. "blockdiag" may take ``n_local`` parts from
    ``part0`` (a traced int) instead of all ``n_parts``."""
    cp = n_parts * cpart
    n_local = n_parts if n_local is None else n_local
    tile = rows.shape[0]
    local = lax.rem(rows, height * width)
    ph = lax.div(local, width)
    pw = lax.rem(local, width)
    ch = jnp.arange(cp, dtype=jnp.int32)
    pad_channels = cp != channels
    ch_ok = ch < channels
    pad = kernel_size // 2
    g_taps = tap_chunk(kernel_size)
    n_chunks = -(-kernel_size // g_taps)

    def step(t, ys):
        dy, chunk = lax.div(t, n_chunks), lax.rem(t, n_chunks)
        dx0 = chunk * g_taps
        row_valid = row_ok & (ph >= pad - dy) & (ph < height + pad - dy)
        base = rows + ((dy - pad) * width - pad)
        if mode == "blockdiag":  # per 16-channel slice: (tile, 16 G) @ (16 G, 16) on TCs
            cols = jnp.arange(16 * g_taps, dtype=jnp.int32)
            # div / rem by 16 (not shift / and): Triton's alignment analysis then sees runs
            # of 16 contiguous channels and vectorises the loads
            dx = dx0 + lax.div(cols, 16)[None, :]      # (1, 16 G): tap of each column
            lane = lax.rem(cols, 16)[None, :]
            col = pw[:, None] + dx
            m = row_valid[:, None] & (col >= pad) & (col < width + pad) & (dx < kernel_size)
            src = base[:, None] + dx
            out = []
            for p, y in enumerate(ys):
                cin = (part0 + p) * cpart + lane
                mp = m & (cin < channels) if pad_channels else m
                xs = plgpu.load(x_ref.at[src, cin], mask=mp, other=0.0)
                out.append(y + plgpu.dot(xs, cw_ref[dy, chunk, part0 + p]))
            return tuple(out)
        (y,) = ys
        for g in range(g_taps):  # grouped conv: gather in-group input i per channel
            dx = dx0 + g
            pixel_ok = (row_valid & (pw >= pad - dx) & (pw < width + pad - dx)
                        & (dx < kernel_size))
            mask = pixel_ok[:, None] & ch_ok[None, :] if pad_channels else pixel_ok[:, None]
            src = (base + dx)[:, None]
            for i in range(group_width):
                cin = (ch // group_width) * group_width + i
                xv = plgpu.load(x_ref.at[src, cin[None, :]], mask=mask, other=0.0)
                y = y + xv.astype(_F32) * cw_ref[dy, dx, i, :][None, :]
        return (y,)

    n_acc = n_local if mode == "blockdiag" else n_parts
    ys = tuple(jnp.zeros((tile, cpart), _F32) for _ in range(n_acc))
    return lax.fori_loop(0, kernel_size * n_chunks, step, ys)


def to_parts(v: jax.Array, mode: str) -> jax.Array:
    """(..., Cp) -> (..., P, Cp / P): even / odd channels when paired, 16-channel slices for
    "blockdiag", one part otherwise."""
    cp = v.shape[-1]
    if mode == "paired":
        return jnp.stack([v[..., 0::2], v[..., 1::2]], axis=-2)
    if mode == "blockdiag":
        return v.reshape(*v.shape[:-1], cp // 16, 16)
    return v[..., None, :]


def prepare_conv_operands(x: jax.Array, params: Mapping[str, Any],
                          mode: str) -> tuple[jax.Array, ...]:
    """``(xp, conv_w, conv_b, norm_scale, norm_shift)`` for :func:`conv_norm_tile`.

    ``xp`` is the uint32 view of x's channel pairs (a bitcast, no copy) when paired, else a
    dummy; conv weights are rounded to x.dtype (kept f32, or x.dtype block-diagonal
    matrices), the vectors are f32, all zero-padded to ``Cp`` channels and split in parts.
    """
    dtype = x.dtype
    c = x.shape[-1]
    cp = padded_channels(c)
    rows = x.size // c
    xp = (lax.bitcast_convert_type(x.reshape(rows, c // 2, 2), jnp.uint32)
          if mode == "paired" else jnp.zeros((1, 1), jnp.uint32))
    conv_w = jnp.asarray(params["conv_w"]).astype(dtype).astype(_F32)
    conv_w = jnp.pad(conv_w, ((0, 0), (0, 0), (0, 0), (0, cp - c)))
    if mode == "paired":  # (k, k, 1, cp) -> (k, k, 2, cp / 2)
        conv_w = to_parts(conv_w[:, :, 0, :], mode)
    elif conv_w.shape[2] > 1:  # grouped: taps padded to whole chunks of G (zero weights)
        k = conv_w.shape[0]
        g = tap_chunk(k)
        n_chunks = -(-k // g)
        conv_w = jnp.pad(conv_w, ((0, 0), (0, n_chunks * g - k), (0, 0), (0, 0)))
        if mode == "blockdiag":  # (k, nG, 8, cp) -> (k, n, cp / 16, 16 G, 16) in x.dtype
            # [dy, chunk, tap, i, slice, h, j]: output channel 16 slice + 8 h + j, input i
            w7 = conv_w.reshape(k, n_chunks, g, 8, cp // 16, 2, 8)
            # block [slice][16 tap + 8 h + i, 8 q + j] = w7[.., tap, i, slice, h, j] if h == q
            conv_w = jnp.einsum("actispj,pq->acstpiqj", w7, jnp.eye(2, dtype=_F32)).reshape(
                k, n_chunks, cp // 16, 16 * g, 16).astype(dtype)
    vectors = (to_parts(f32_vector(params[name], cp), mode)
               for name in ("conv_b", "norm_scale", "norm_shift"))
    return (xp, conv_w, *vectors)
