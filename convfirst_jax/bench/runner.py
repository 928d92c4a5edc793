"""The three suites of the latency lab: blocks, models, layers.

Each ``run_*`` returns a list of record dicts (see ``common.make_record``) plus notes; the CLI
writes them out and draws the figures.
"""

from __future__ import annotations

import itertools
import re
import sys
import types
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from convfirst_jax.analysis import roofline
from convfirst_jax.analysis.ceilings import Ceilings
from convfirst_jax.bench import blocks as blk
from convfirst_jax.bench import models as mdl
from convfirst_jax.bench.common import (TimingOptions, make_record, max_abs_diff, on_gpu,
                                        pallas_skip_note, random_normal, rotated_inputs,
                                        skipped_record)
from convfirst_jax.bench.layers import layer_op


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Notes(list):
    """Notes for results.md; each message is also printed once to stderr."""

    def add(self, msg: str) -> None:
        if msg not in self:
            log(msg)
            self.append(msg)


# ----------------------------------------------------------------------------- layers
def time_layers(layers: Sequence[Any], *, group: str, batch_size: int, dtype: str,
                resolution: int, ceil: Ceilings, opts: TimingOptions, seed: Sequence[int],
                fused_bytes: Callable[[list], int] | None = None,
                block_sizes: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Time every layer standalone (waterline chart), then one aggregate record per block.

    ``fused_bytes(block_layers)`` gives the device-memory bytes of the fused block (x +
    weights + out); None leaves the fused floor out. ``block_sizes`` (block -> number of
    layers) restricts the aggregates to blocks whose every layer was timed.
    """
    recs: list[dict[str, Any]] = []
    peak, bw = ceil.peak_flops, ceil.bandwidth
    for i, layer in enumerate(layers):
        fn, make = layer_op(layer, batch_size, dtype)
        sets = rotated_inputs(make, [*seed, i], opts)
        timing = opts.time(fn, sets)
        nbytes = roofline.layer_bytes(layer)
        recs.append(make_record(
            suite="layers", name=layer.name, impl="xla", mode="inference", dtype=dtype,
            batch_size=batch_size, resolution=resolution, kind=layer.kind, ceil=ceil,
            timing=timing, flops=layer.flops, macs=layer.macs, nbytes=nbytes,
            params=layer.params, waterline_s=roofline.kernel_floor(layer.flops, nbytes, peak, bw),
            group=group, block=layer.block or "", bound=roofline.bound(layer.flops, nbytes, peak, bw)))
    by_block: dict[str, list] = {}
    for layer, rec in zip(layers, recs):
        if layer.block:
            by_block.setdefault(layer.block, []).append((layer, rec))
    for name, pairs in by_block.items():
        ls = [p[0] for p in pairs]
        if block_sizes is not None and block_sizes.get(name) != len(ls):
            continue  # only part of this block was selected (--only)
        med = sum(p[1]["median_s"] for p in pairs)
        floor = sum(p[1]["waterline_s"] for p in pairs)
        flops = sum(l.flops for l in ls)
        fused = None
        if fused_bytes is not None:
            fused = roofline.kernel_floor(flops, fused_bytes(ls), peak, bw)
        recs.append({
            "suite": "layers", "name": name, "impl": "xla-layers-sum", "mode": "inference",
            "dtype": dtype, "batch_size": batch_size, "resolution": resolution, "kind": "block",
            "group": group, "status": "ok", "note": "sum of the block's standalone layer timings",
            "median_s": med, "p10_s": sum(p[1]["p10_s"] for p in pairs),
            "p90_s": sum(p[1]["p90_s"] for p in pairs), "flops": flops,
            "macs": sum(l.macs for l in ls), "bytes": sum(roofline.layer_bytes(l) for l in ls),
            "params": sum(l.params for l in ls), "ideal_s": roofline.ideal_latency(flops, peak),
            "waterline_s": floor, "fused_floor_s": fused,
            "latency_over_waterline": med / floor if floor else None,
            "latency_over_fused_floor": med / fused if fused else None,
            "efficiency": roofline.efficiency(flops, med, peak) if flops else None,
        })
    return recs


# ----------------------------------------------------------------------------- blocks
def run_blocks(args: Any, ceilings: dict[str, Ceilings], opts: TimingOptions,
               notes: Notes) -> list[dict[str, Any]]:
    """Suite "blocks": one conv-first block per configuration, every impl and batch size."""
    recs: list[dict[str, Any]] = []
    grid = itertools.product(args.dtype, args.channels, args.resolution, args.kernel_size,
                             args.expansion, args.norm, args.activation)
    for ci, (dtype, c, r, k, e, norm, act) in enumerate(grid):
        case = blk.BlockCase(channels=c, resolution=r, kernel_size=k, expansion=e,
                             group_width=args.group_width, norm=norm, activation=act,
                             layer_scale=args.layer_scale, dtype=dtype)
        ceil = ceilings[dtype]
        for b in args.batch_sizes:
            layers = blk.block_layer_costs(case, b)
            flops = sum(l.flops for l in layers)
            nbytes = sum(roofline.layer_bytes(l) for l in layers)
            wl = roofline.waterline(layers, ceil.peak_flops, ceil.bandwidth)
            fused = roofline.fused_block_floor(layers, ceil.peak_flops, ceil.bandwidth)

            def make(rng, b=b):
                return random_normal(rng, (b, r, r, c), dtype), blk.make_block_params(rng, case)

            sets = None
            ref_out: dict[str, Any] = {}
            for impl in args.impls:
                common = dict(suite="blocks", name=case.label, impl=impl, mode="inference",
                              dtype=dtype, batch_size=b)
                if impl == "pallas" and not on_gpu():
                    notes.add(pallas_skip_note())
                    recs.append(skipped_record(note=pallas_skip_note(), **common))
                    continue
                try:
                    fn = blk.block_impl_fn(impl, case)
                except ImportError as ex:
                    msg = f"skipping impl {impl}: pallas_kernels is not importable ({ex})"
                    notes.add(msg)
                    recs.append(skipped_record(note=msg, **common))
                    continue
                if sets is None:
                    sets = rotated_inputs(make, [opts.seed, ci, b], opts)
                log(f"[blocks] {case.label} {dtype} batch {b} impl {impl}")
                timing = opts.time(fn, sets, on_first=lambda out, i=impl: ref_out.__setitem__(i, out))
                diff = (max_abs_diff(ref_out[impl], ref_out["xla"])
                        if "xla" in ref_out and impl != "xla" else None)
                recs.append(make_record(
                    **common, resolution=r, kind="block", ceil=ceil, timing=timing,
                    flops=flops, macs=sum(l.macs for l in layers), nbytes=nbytes,
                    params=sum(l.params for l in layers), waterline_s=wl, fused_floor_s=fused,
                    max_abs_diff_vs_xla=diff, series=impl))
        if args.layer_breakdown:
            b = max(args.batch_sizes)
            log(f"[blocks] {case.label} {dtype} batch {b}: timing each unfused op standalone")
            layers = blk.block_layer_costs(case, b)
            recs += time_layers(
                layers, group=f"{case.label} {dtype}", batch_size=b, dtype=dtype, resolution=r,
                ceil=ceil, opts=opts, seed=[opts.seed, ci, 7919],
                fused_bytes=lambda ls: (ls[0].act_bytes_read + ls[-1].act_bytes_written
                                        + sum(l.weight_bytes for l in ls)))
    return recs


# ----------------------------------------------------------------------------- models
def _model_layer_breakdown(name: str, *, resolution: int, batch_size: int, dtype: str,
                           num_classes: int, ceil: Ceilings, opts: TimingOptions,
                           only: str | None = None) -> list[dict[str, Any]]:
    from convfirst_jax.complexity import fused_block_bytes

    table = mdl.model_table(name, resolution, batch_size, dtype, num_classes)
    layers = [l for l in table.layers if only is None or re.search(only, l.name)]
    fb = None
    if mdl.has_conv_first_blocks(name):
        def fb(ls):
            return fused_block_bytes(ls, batch=batch_size, dtype_bytes=table.dtype_bytes)
    if not layers:
        log(f"[layers] {name}: --only {only!r} matches none of its {len(table.layers)} layers")
        return []
    log(f"[layers] {name}: timing {len(layers)} ops standalone, batch {batch_size} {dtype}")
    return time_layers(layers, group=f"{name} @{resolution}px", batch_size=batch_size,
                       dtype=dtype, resolution=resolution, ceil=ceil, opts=opts,
                       seed=[opts.seed, 17], fused_bytes=fb,
                       block_sizes={k: len(v) for k, v in table.blocks.items()})


def run_models(args: Any, ceilings: dict[str, Ceilings], opts: TimingOptions, notes: Notes,
               *, top1: dict[str, float] | None = None, modes: Sequence[str] = ("inference",)
               ) -> list[dict[str, Any]]:
    """Suite "models": whole-model inference (and train step) per impl, dtype and batch."""
    recs: list[dict[str, Any]] = []
    top1 = top1 or {}
    res, ncls = args.resolution, args.num_classes
    outputs: dict[tuple, Any] = {}
    for mi, name in enumerate(args.models):
        fam = mdl.family_label(name)
        for impl in args.block_impls:
            series = fam if fam == "ResNet" else f"{fam}-{impl}"
            for dtype in args.dtypes:
                common = dict(suite="models", name=name, impl=impl, dtype=dtype)
                if impl == "pallas" and not mdl.has_conv_first_blocks(name):
                    msg = f"{name} has no conv-first blocks: block_impl pallas = xla, not re-timed"
                    recs.append(skipped_record(mode="inference", batch_size=None, note=msg,
                                               **common))
                    continue
                if impl == "pallas" and not on_gpu():
                    notes.add(pallas_skip_note())
                    recs.append(skipped_record(mode="inference", batch_size=None,
                                               note=pallas_skip_note(), **common))
                    continue
                ceil = ceilings[dtype]
                model = mdl.build_model(name, block_impl=impl, dtype=dtype, num_classes=ncls,
                                        seed=opts.seed)
                fwd, state = mdl.inference_fn(model)
                for b in args.batch_sizes:
                    table = mdl.model_table(name, res, b, dtype, ncls)
                    unfused, fused = mdl.model_floors(table, ceil)
                    # Rotate the images (weights are shared by every call, as in serving).
                    xs = rotated_inputs(lambda rng: (random_normal(rng, (b, res, res, 3), dtype),),
                                        [opts.seed, mi, b], opts)
                    sets = [(state, *x) for x in xs]
                    log(f"[models] {name} {impl} {dtype} batch {b}: inference")
                    okey = (name, dtype, b)
                    first: dict[str, Any] = {}
                    timing = opts.time(fwd, sets, on_first=lambda out: first.setdefault("o", out))
                    diff = None
                    if impl == "xla":
                        outputs[okey] = first["o"]
                    elif okey in outputs:
                        diff = max_abs_diff(first["o"], outputs[okey])
                    recs.append(make_record(
                        **common, mode="inference", batch_size=b, resolution=res, kind="model",
                        ceil=ceil, timing=timing, flops=table.flops, macs=table.macs,
                        nbytes=table.bytes, params=table.params, waterline_s=unfused,
                        fused_floor_s=fused, series=series, top1=top1.get(name),
                        max_abs_diff_vs_xla=diff))
                    del sets
                if "train" in modes:
                    step, state0 = mdl.train_step_fn(model)
                    for b in args.batch_sizes:
                        table = mdl.model_table(name, res, b, dtype, ncls)
                        def make(rng, b=b):
                            return (random_normal(rng, (b, res, res, 3), dtype),
                                    jnp.asarray(rng.integers(0, ncls, (b,)), jnp.int32))

                        sets = [(*state0, *xy)
                                for xy in rotated_inputs(make, [opts.seed, mi, b, 1], opts)]
                        log(f"[models] {name} {impl} {dtype} batch {b}: train step")
                        timing = opts.time(step, sets)
                        flops = mdl.TRAIN_FLOPS_FACTOR * table.flops
                        recs.append(make_record(
                            **common, mode="train", batch_size=b, resolution=res, kind="model",
                            ceil=ceil, timing=timing, flops=flops,
                            macs=mdl.TRAIN_FLOPS_FACTOR * table.macs, nbytes=table.bytes,
                            params=table.params, waterline_s=None, series=series,
                            note="ops = 3 x forward (fwd + bwd); no train waterline modelled"))
                        del sets
                del model, state
    if getattr(args, "compare_torch", False):
        recs += _torch_records(args, ceilings, opts, notes)
    if getattr(args, "waterline", False):
        for name in args.models:
            dtype = args.dtypes[0]
            recs += _model_layer_breakdown(
                name, resolution=res, batch_size=args.waterline_batch or args.batch_sizes[0],
                dtype=dtype, num_classes=ncls, ceil=ceilings[dtype], opts=opts,
                only=getattr(args, "only", None))
    return recs


def _torch_records(args, ceilings, opts: TimingOptions, notes: Notes) -> list[dict[str, Any]]:
    from convfirst_jax.bench import torch_compare as tc

    ok, why = tc.torch_available()
    if not ok:
        notes.add(why)
        return []
    if "bfloat16" not in ceilings:
        notes.add("--compare-torch: bfloat16 ceilings not measured; ideal/waterline of the "
                  "torch rows use the first dtype's ceilings")
    ceil = ceilings.get("bfloat16") or next(iter(ceilings.values()))
    recs = []
    done = set()
    for name in args.models:
        tname = tc.timm_name(name)
        if tname in done:
            continue
        done.add(tname)
        for b in args.batch_sizes:
            log(f"[torch] timm {tname} batch {b} (torch.compile, channels_last, bf16 autocast)")
            try:
                timing, info = tc.time_timm(
                    name, batch_size=b, resolution=args.resolution, num_classes=args.num_classes,
                    warmup=opts.warmup, repeats=opts.repeats, min_sample_s=opts.min_sample_s,
                    max_number=opts.max_number, buffers=max(2, opts.buffers or 4),
                    seed=opts.seed)
            except Exception as ex:  # a torch failure must not lose the JAX results
                notes.add(f"--compare-torch: timm {tname} failed: {type(ex).__name__}: {ex}")
                break
            table = mdl.model_table(tname, args.resolution, b, "bfloat16", args.num_classes)
            unfused, fused = mdl.model_floors(table, ceil)
            recs.append(make_record(
                suite="models", name=f"timm:{tname}", impl="torch", mode="inference",
                dtype="bfloat16", batch_size=b, resolution=args.resolution, kind="model",
                ceil=ceil, timing=timing, flops=table.flops, macs=table.macs,
                nbytes=table.bytes, params=table.params, waterline_s=unfused,
                fused_floor_s=fused, series="timm-torch.compile", **info))
    return recs


def run_layers(args: Any, ceilings: dict[str, Ceilings], opts: TimingOptions,
               notes: Notes) -> list[dict[str, Any]]:
    """Suite "layers": every op of each model standalone, plus the whole model for reference."""
    recs: list[dict[str, Any]] = []
    dtype = args.dtype
    for name in args.models:
        recs += _model_layer_breakdown(name, resolution=args.resolution,
                                       batch_size=args.batch_size, dtype=dtype,
                                       num_classes=args.num_classes, ceil=ceilings[dtype],
                                       opts=opts, only=args.only)
    margs = types.SimpleNamespace(models=args.models, block_impls=args.block_impls,
                                  dtypes=[dtype], batch_sizes=[args.batch_size],
                                  resolution=args.resolution, num_classes=args.num_classes)
    recs += run_models(margs, ceilings, opts, notes)
    return recs
