"""The fused conv-first block: one Pallas (Triton) kernel per block (Lavin 2024, "block fusion").

One program computes a tile of ``tile`` output pixels of one image with all channels::

    y   = sum_{dy,dx,i} x[n, h+dy-k//2, w+dx-k//2, group(c)*gw + i] * conv_w[dy, dx, i, c] + conv_b
    y   = norm(y)                         # affine (folded BN) or per-pixel LayerNorm over C
    z   = sum_chunks act(y @ w1[:, chunk] + b1[chunk]) @ w2[chunk, :]
    out = x + branch_scale[n] * layer_scale * (z + b2)

and writes only ``out``: the E*C hidden activations exist one (tile, HC) chunk at a time in
registers/shared memory and never reach device memory (Lavin 2024, arXiv 2404.03617, "block
fusion"; the waterline of the fused block counts only x, the weights and out).

Layout and padding. Channels are padded inside the kernel to ``Cp`` = next power of two >= 16
(Triton block shapes are powers of two and ``tl.dot`` needs dims >= 16): loads of x use a
channel mask (padded lanes read 0), weights are zero-padded in the wrapper, the LayerNorm
mean/variance divide by the real C and mask the padded lanes, stores are masked. The
hidden dim is padded to a multiple of the chunk width HC with zero weights (act(0) = 0 for all
four activations, and the padded rows of w2 are zero anyway). "SAME" zero padding of the
k x k conv is a per-tap pixel mask.

Grouped conv (group_width 8): for each tap and each of the 8 in-group inputs i, the kernel
gathers ``x[..., (c // 8) * 8 + i]`` for every output channel c and does an elementwise FMA
with ``conv_w[dy, dx, i, c]`` -- 8x the depthwise FMAs and loads (the gathers hit L1), no
block-diagonal weight blow-up, and the full-row LayerNorm still sees all channels.

Wide blocks (``tuning.block_plan`` says "split": C >= 256 depthwise, C >= 512 grouped) run
as a conv + norm kernel and one fused MLP kernel or two GEMMs instead
(:mod:`pallas_kernels.split_block`); the conv + norm stage of both plans is
:mod:`pallas_kernels.conv_stage`, the MLP loop and project epilogue
:mod:`pallas_kernels.mlp_stage`.

Small calls (batch 1: ``tuning.launch_config``'s small-call rule) shrink the tile to 16 pixels
and, where that still leaves SMs idle, split the hidden dim over a second grid axis
(``LaunchConfig.hidden_parts`` G): program (t, g) recomputes the conv + norm of tile t, runs
hidden chunks ``[g n / G, (g + 1) n / G)`` and writes its f32 partial z; the G partials are
summed in a fixed order and the epilogue applied in XLA
(:func:`pallas_kernels.mlp_stage.sum_parts_epilogue`): only the f32 summation order changes,
no atomics. Wide depthwise blocks in calls too small for the split plan take this form too
(``tuning.split_small_call``).

Backward: ``jax.custom_vjp`` whose backward pass recomputes the block with XLA
(``jax.vjp`` of :func:`pallas_kernels.reference.conv_first_block_reference`); the fused kernel
is forward-only. Under an ambient mesh both passes run per batch shard (``jax.shard_map``);
the weight gradients are summed over the batch axis with ``psum``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.extend import core as jex_core
from jax.interpreters import batching, mlir
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.activations import kernel_activation, kernel_hidden_scale
from pallas_kernels.conv_stage import conv_mode, conv_norm_tile, prepare_conv_operands, to_parts
from pallas_kernels.mlp_stage import mlp_tile, project_epilogue, sum_parts_epilogue
from pallas_kernels.operands import mlp_operands
from pallas_kernels.options import BlockOptions, validate_inputs
from pallas_kernels.reference import conv_first_block_reference
from pallas_kernels.sharding import batch_shard_map
from pallas_kernels.split_block import split_forward, split_kernels
from pallas_kernels.tuning import (LaunchConfig, block_plan, launch_config, padded_channels,
                                   split_launch_config)


def _block_kernel(x_ref, xp_ref, cw_ref, cb_ref, ns_ref, nb_ref, w1_ref, b1_ref, w2_ref,
                  b2_ref, ls_ref, bs_ref, *rest, height: int, width: int, channels: int,
                  total_rows: int, tile: int, hidden_chunk: int, n_chunks: int,
                  kernel_size: int, group_width: int, norm: str,
                  act: Callable[[jax.Array], jax.Array], eps: float, has_layer_scale: bool,
                  has_branch_scale: bool, conv_mode: str, hidden_parts: int = 1):
    """Kernel body: one tile of ``tile`` consecutive rows of the flattened (N*H*W, C) pixels
    per program (tiles may span images); see the module docstring. The conv + norm stage is
    :func:`pallas_kernels.conv_stage.conv_norm_tile` (operands in "parts", see
    :data:`pallas_kernels.conv_stage.CONV_MODES`), the MLP and the project epilogue
    :mod:`pallas_kernels.mlp_stage`.

    ``hidden_parts`` G > 1 (small calls): program (t, g) does hidden chunks
    ``[g * n_chunks, (g + 1) * n_chunks)`` of tile t and stores its f32 partial z to rows
    ``g * total_rows + rows`` of the (G * total_rows, Cp) ``o_ref`` (all Cp columns; the
    epilogue is :func:`pallas_kernels.mlp_stage.sum_parts_epilogue` after the kernel).
    """
    o_ref = rest[-1]  # rest == (o_ref,) or (aliased_init_ref, o_ref)
    compute_dtype = w1_ref.dtype

    rows = pl.program_id(0) * tile + jnp.arange(tile, dtype=jnp.int32)
    row_ok = rows < total_rows
    ys = conv_norm_tile(x_ref, xp_ref, cw_ref, cb_ref, ns_ref, nb_ref, rows=rows,
                        row_ok=row_ok, height=height, width=width, channels=channels,
                        kernel_size=kernel_size, group_width=group_width, norm=norm, eps=eps,
                        mode=conv_mode, compute_dtype=compute_dtype)

    # 1x1 expand -> act -> 1x1 project, one hidden chunk at a time (never in HBM). With
    # P = 2 the expand is two dots over the even / odd rows of w1 (K = Cp / 2 each).
    chunk0 = pl.program_id(1) * n_chunks if hidden_parts > 1 else 0
    (z,) = mlp_tile(ys, w1_ref, b1_ref, w2_ref, hidden_chunk=hidden_chunk, n_chunks=n_chunks,
                    act=act, compute_dtype=compute_dtype, chunk0=chunk0)
    if hidden_parts > 1:
        cols = jnp.arange(z.shape[1], dtype=jnp.int32)
        part_rows = pl.program_id(1) * total_rows + rows
        plgpu.store(o_ref.at[part_rows[:, None], cols[None, :]], z, mask=row_ok[:, None])
        return
    project_epilogue(z, x_ref, b2_ref, ls_ref, bs_ref, o_ref, rows=rows, row_ok=row_ok,
                     col0=0, channels=channels, pixels_per_image=height * width,
                     has_layer_scale=has_layer_scale, has_branch_scale=has_branch_scale)


def _prepare_operands(x: jax.Array, params: Mapping[str, Any], branch_scale: jax.Array | None,
                      hidden_multiple: int, mode: str,
                      hidden_scale: float = 1.0) -> tuple[jax.Array, ...]:
    """Operands of :func:`_block_kernel` after x: the conv stage's
    (:func:`pallas_kernels.conv_stage.prepare_conv_operands`), then :func:`mlp_operands`
    (hidden dim padded to ``hidden_multiple``: the chunk width times the hidden parts; w2
    divided by the activation's ``hidden_scale``) with the rows of w1 split in the conv
    stage's parts."""
    xp, *conv = prepare_conv_operands(x, params, mode)
    w1, b1, w2, b2, ls, bs = mlp_operands(x, params, branch_scale, hidden_multiple,
                                          hidden_scale)
    # (Cp, Hp) -> (P, Cp / P, Hp): the expand's K dim in the conv stage's parts
    w1 = jnp.moveaxis(to_parts(w1.T, mode), 0, -1)
    return (xp, *conv, w1, b1, w2, b2, ls, bs)


def block_launch_config(x_shape: tuple[int, ...], x_dtype: Any, params: Mapping[str, Any],
                        kernel_size: int, group_width: int) -> LaunchConfig:
    """The tuning-table entry (or default) the kernel uses for this configuration, with the
    small-call rule for ``x_shape``'s N*H*W pixels (smaller tiles, hidden parts)."""
    n, h, w, c = x_shape
    return launch_config(padded_channels(c), kernel_size, group_width,
                         params["w1"].shape[1], jnp.dtype(x_dtype).name, rows=n * h * w)


def block_kernel_count(channels: int, kernel_size: int, group_width: int, hidden: int,
                       dtype: Any, rows: int | None = None) -> int:
    """How many Triton kernels (pallas_calls) one block call launches: 1 for the fused plan,
    2 or 3 for the split plan (:func:`pallas_kernels.tuning.block_plan`; with or without the
    fused MLP kernel: :func:`pallas_kernels.split_block.split_kernels`). ``rows`` (N*H*W of
    the call; None: a large call) matters for wide blocks only: small calls take the GEMMs
    (:func:`pallas_kernels.tuning.split_launch_config`), the smallest the fused kernel with
    hidden parts (:func:`pallas_kernels.tuning.split_small_call`; its partial sums and
    epilogue are XLA, not a pallas_call)."""
    cp = padded_channels(channels)
    dtype_name = jnp.dtype(dtype).name
    if block_plan(cp, kernel_size, group_width, hidden, dtype_name, rows=rows) != "split":
        return 1
    return len(split_kernels(split_launch_config(cp, kernel_size, group_width, hidden,
                                                 dtype_name, rows=rows)))


# Lowering platforms that get the compiled Triton kernel when ``interpret=None``.
TRITON_PLATFORMS = ("cuda", "rocm")


def fused_forward(x: jax.Array, params: Mapping[str, Any], opts: BlockOptions,
                  branch_scale: jax.Array | None = None,
                  out_init: jax.Array | None = None) -> jax.Array:
    """Forward pass only: one ``pallas_call``, no custom_vjp and no sharding.

    ``params`` must already be validated. ``out_init`` (optional, shape/dtype of ``x``) is
    aliased to the output buffer, so pixels the kernel fails to write keep its values; tests
    pass a NaN-filled buffer to catch unwritten tiles.

    ``opts.interpret`` True / False forces the interpreter / the Triton lowering; None picks
    per *lowering* platform (a primitive with per-platform lowering rules): the Triton kernel
    for :data:`TRITON_PLATFORMS`, the interpreter elsewhere, so ``jax.export(platforms=
    ["cuda"])`` on a CPU host embeds the Triton kernel and no interpreter, and a multi-platform
    export (``["cpu", "cuda"]``) gets each where it belongs.
    """
    if opts.interpret is None:
        flat, treedef = jax.tree.flatten((x, dict(params), branch_scale, out_init))
        return _forward_p.bind(*flat, treedef=treedef, opts=opts)
    return _pallas_forward(x, params, opts, branch_scale, out_init)


# The per-platform choice is a primitive with one lowering rule per platform: lowered for
# TRITON_PLATFORMS it is the Triton pallas_call, for any other platform the interpreter.
# (lax.platform_dependent would lower *both* branches for every platform of a multi-platform
# export, and the Triton pallas_call has no CPU lowering.)
_forward_p = jex_core.Primitive("conv_first_block_forward")


def _flat_forward(*flat, treedef, opts: BlockOptions, interpret: bool):
    x, params, branch_scale, out_init = jax.tree.unflatten(treedef, flat)
    return _pallas_forward(x, params, dataclasses.replace(opts, interpret=interpret),
                           branch_scale, out_init)


@functools.lru_cache(maxsize=None)
def _jitted_flat_forward(treedef, opts: BlockOptions, interpret: bool):
    """One jitted function per (treedef, options, interpreter?), so eager calls hit jit's cache."""
    return jax.jit(functools.partial(_flat_forward, treedef=treedef, opts=opts,
                                     interpret=interpret))


def _forward_impl(*flat, treedef, opts):
    # eager (un-jitted) call: runs on the default backend
    interpret = jax.default_backend() not in ("gpu", *TRITON_PLATFORMS)
    return _jitted_flat_forward(treedef, opts, interpret)(*flat)


def _forward_abstract_eval(x_aval, *rest, treedef, opts):
    del rest, treedef, opts
    return x_aval  # the output has the shape and dtype of x


def _forward_batching(args, dims, *, treedef, opts):
    """vmap: a sequential ``lax.map`` over the mapped axis (correct for any mix of mapped
    arguments; the fused kernel itself is per call)."""
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    mapped = [jnp.moveaxis(a, d, 0) if d is not None else None
              for a, d in zip(args, dims)]

    def one(slices):
        it = iter(slices)
        flat = [next(it) if m is not None else a for a, m in zip(args, mapped)]
        return _forward_p.bind(*flat, treedef=treedef, opts=opts)

    out = lax.map(one, [m for m in mapped if m is not None])
    assert out.shape[0] == size
    return out, 0


_forward_p.def_impl(_forward_impl)
_forward_p.def_abstract_eval(_forward_abstract_eval)
batching.primitive_batchers[_forward_p] = _forward_batching
mlir.register_lowering(_forward_p, mlir.lower_fun(functools.partial(
    _flat_forward, interpret=True), multiple_results=False))
for _platform in TRITON_PLATFORMS:
    mlir.register_lowering(_forward_p, mlir.lower_fun(functools.partial(
        _flat_forward, interpret=False), multiple_results=False), platform=_platform)


def _pallas_forward(x: jax.Array, params: Mapping[str, Any], opts: BlockOptions,
                    branch_scale: jax.Array | None, out_init: jax.Array | None) -> jax.Array:
    """The block's kernels with ``opts.interpret`` a bool (see :func:`fused_forward`): one
    ``pallas_call``, or the split plan's two or three (:mod:`pallas_kernels.split_block`) where
    :func:`pallas_kernels.tuning.block_plan` says "split"."""
    n, h, w, c = x.shape
    hidden = params["w1"].shape[1]
    if out_init is not None and (out_init.shape != x.shape or out_init.dtype != x.dtype):
        raise ValueError(f"out_init must match x: got {out_init.shape} {out_init.dtype}, "
                         f"expected {x.shape} {x.dtype}")
    total_rows = n * h * w
    if block_plan(padded_channels(c), opts.kernel_size, opts.group_width, hidden,
                  jnp.dtype(x.dtype).name, rows=total_rows) == "split":
        return split_forward(x, params, opts, branch_scale, out_init)
    lc = block_launch_config(x.shape, x.dtype, params, opts.kernel_size, opts.group_width)
    mode = conv_mode(x.dtype, c, opts.group_width)
    parts = lc.hidden_parts
    operands = _prepare_operands(x, params, branch_scale, lc.hidden_chunk * parts, mode,
                                 kernel_hidden_scale(opts.activation, x.dtype))
    hp = operands[-5].shape[0]  # b1: the padded hidden width, a multiple of HC * parts
    has_ls = params.get("layer_scale") is not None
    kernel = functools.partial(
        _block_kernel, height=h, width=w, channels=c, total_rows=total_rows, tile=lc.tile,
        hidden_chunk=lc.hidden_chunk, n_chunks=hp // (lc.hidden_chunk * parts),
        kernel_size=opts.kernel_size, group_width=opts.group_width, norm=opts.norm,
        act=kernel_activation(opts.activation, triton=not opts.interpret, dtype=x.dtype),
        eps=float(opts.eps), has_layer_scale=has_ls,
        has_branch_scale=branch_scale is not None, conv_mode=mode, hidden_parts=parts)
    x2 = x.reshape(total_rows, c)  # flattened pixels: free, row-major NHWC
    args = (x2, *operands)  # operands start with xp, the uint32 pair view (or a dummy)
    grid = (pl.cdiv(total_rows, lc.tile),)
    out_shape = jax.ShapeDtypeStruct((total_rows, c), x.dtype)
    init = None if out_init is None else out_init.reshape(total_rows, c)
    if parts > 1:  # (G * rows, Cp) f32 partial projections, summed after the kernel
        grid = (*grid, parts)
        out_shape = jax.ShapeDtypeStruct((parts * total_rows, padded_channels(c)),
                                         jnp.float32)
        # out_init given: NaN partials, so a partial the kernel fails to write poisons out
        init = None if out_init is None else jnp.full(out_shape.shape, jnp.nan, jnp.float32)
    aliases = {}
    if init is not None:
        aliases = {len(args): 0}
        args = (*args, init)
    out = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        input_output_aliases=aliases,
        compiler_params=plgpu.CompilerParams(num_warps=lc.num_warps,
                                             num_stages=lc.num_stages),
        interpret=opts.interpret,
        name=f"conv_first_block_k{opts.kernel_size}_gw{opts.group_width}",
    )(*args)
    if parts > 1:
        b2, ls, bs = operands[-3:]
        out = sum_parts_epilogue(out.reshape(parts, total_rows, -1), x2, b2, ls, bs,
                                 pixels_per_image=h * w, has_layer_scale=has_ls,
                                 has_branch_scale=branch_scale is not None)
    return out.reshape(x.shape)


def _sharded_forward(opts: BlockOptions, x, params, branch_scale):
    def per_shard(xs, ps, bss, *, axis_name):
        del axis_name
        return fused_forward(xs, ps, opts, bss)
    return batch_shard_map(per_shard, opts.batch_axis, (x, params, branch_scale),
                           batched=(True, False, True), out_batched=True)


def _reference(opts: BlockOptions, x, params, branch_scale):
    return conv_first_block_reference(
        x, params, kernel_size=opts.kernel_size, norm=opts.norm, activation=opts.activation,
        group_width=opts.group_width, eps=opts.eps, branch_scale=branch_scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_block(opts: BlockOptions, x, params, branch_scale):
    return _sharded_forward(opts, x, params, branch_scale)


def _fused_block_fwd(opts: BlockOptions, x, params, branch_scale):
    return _sharded_forward(opts, x, params, branch_scale), (x, params, branch_scale)


def _fused_block_bwd(opts: BlockOptions, residuals, g):
    """XLA recompute: the vjp of the jnp reference, per batch shard; weight grads psum'd."""
    def per_shard(xs, ps, bss, gs, *, axis_name):
        _, vjp = jax.vjp(functools.partial(_reference, opts), xs, ps, bss)
        gx, gp, gbs = vjp(gs)
        if axis_name is not None:
            gp = lax.psum(gp, axis_name)
        return gx, gp, gbs

    x, params, branch_scale = residuals
    return batch_shard_map(per_shard, opts.batch_axis, (x, params, branch_scale, g),
                           batched=(True, False, True, True), out_batched=(True, False, True))


_fused_block.defvjp(_fused_block_fwd, _fused_block_bwd)


def conv_first_block(
    x: jax.Array,
    params: Mapping[str, Any],
    *,
    kernel_size: int,
    norm: str,
    activation: str,
    group_width: int = 1,
    eps: float = 1e-6,
    branch_scale: jax.Array | None = None,
    interpret: bool | None = None,
    batch_axis: str = "data",
) -> jax.Array:
    """Fused conv-first block (Lavin 2024, "block fusion") as one Pallas Triton kernel.

    Computes ``x + branch_scale[n] * layer_scale * (act(norm(dwconv(x) + conv_b) @ w1 + b1)
    @ w2 + b2)`` exactly like :func:`pallas_kernels.conv_first_block_reference`, writing
    only the output (hidden activations stay on chip).

    Args:
      x: (N, H, W, C) NHWC activations, float32 / bfloat16 / float16, C a multiple of 8.
      params: ``conv_w`` (k, k, group_width, C) HWIO; ``conv_b``, ``norm_scale``,
        ``norm_shift``, ``b2`` (C,); ``w1`` (C, E*C); ``b1`` (E*C,); ``w2`` (E*C, C);
        optional ``layer_scale`` (C,) (missing or None: no layer scale). Any float dtype;
        conv and matmul weights are rounded to ``x.dtype``, accumulation is float32.
      kernel_size: 3, 5 or 7 ("SAME" zero padding k//2).
      norm: "affine" (``y * norm_scale + norm_shift``; folded BatchNorm) or "layernorm"
        (per pixel over C, then ``* norm_scale + norm_shift``).
      activation: "relu", "silu", "gelu" (exact erf) or "gelu_tanh". In a bfloat16 block
        the kernel computes each as x/2 + x/2 tanh(u) (one MUFU.TANH; "gelu" with the
        logistic Phi, within 1.42e-4 |x| of the erf form): the difference hides under the
        bfloat16 rounding of h (:mod:`pallas_kernels.activations`). float32 / float16: exact.
      group_width: 1 (depthwise) or 8 (channels per conv group).
      eps: LayerNorm epsilon.
      branch_scale: optional (N,) per-sample multiplier of the residual branch (drop path).
      interpret: True forces the Pallas interpreter, False the Triton lowering; None (default)
        chooses per lowering platform: Triton when lowered for CUDA/ROCm, the interpreter
        otherwise (``lax.platform_dependent``), so ``jax.export(platforms=["cuda"])`` on a
        CPU host yields the Triton kernel while CPU execution uses the interpreter.
      batch_axis: inside ``jax.set_mesh(mesh)`` with this axis, the kernel runs per batch
        shard via ``jax.shard_map`` (no all-gather); N must divide evenly.

    Returns:
      (N, H, W, C) array of ``x.dtype`` (empty when N, H or W is 0, like the reference).

    Differentiable (jit / vmap / grad): a ``jax.custom_vjp`` whose backward pass recomputes
    the block through XLA (``jax.vjp`` of the jnp reference), giving gradients for x, every
    param and branch_scale. Only the forward pass is fused.

    Raises:
      ValueError: unsupported configuration (C not a multiple of 8, k not in {3,5,7},
        group width not 1/8, unknown norm/activation, non-float dtype, wrong param shapes);
        ``block_impl="xla"`` handles every configuration.
    """
    params = validate_inputs(x, params, kernel_size=kernel_size, norm=norm,
                             activation=activation, group_width=group_width, eps=eps,
                             branch_scale=branch_scale, kernel_only=True)
    x = jnp.asarray(x)
    params = {k: (None if v is None else jnp.asarray(v)) for k, v in params.items()}
    if branch_scale is not None:
        branch_scale = jnp.asarray(branch_scale)
    if x.size == 0:
        # N, H or W is 0: nothing to launch (a zero-size grid); the reference gives the empty
        # result of the right shape/dtype and (zero) gradients for every input.
        return conv_first_block_reference(
            x, params, kernel_size=int(kernel_size), norm=norm, activation=activation,
            group_width=int(group_width), eps=float(eps), branch_scale=branch_scale)
    opts = BlockOptions(kernel_size=int(kernel_size), norm=norm, activation=activation,
                        group_width=int(group_width), eps=float(eps),
                        interpret=None if interpret is None else bool(interpret),
                        batch_axis=batch_axis)
    return _fused_block(opts, x, params, branch_scale)
