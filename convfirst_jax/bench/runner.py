"""The three suites of the latency lab: blocks, models, layers.

Each ``run_*`` takes its suite's options (:mod:`convfirst_jax.bench.options`), the ceilings
per dtype and a :class:`Notes`, and returns a list of record dicts (``common.make_record``);
the CLI writes them out and draws the figures.
"""

from __future__ import annotations

import itertools
import re
import sys
from typing import Any, Callable, Sequence

import jax.numpy as jnp

from convfirst_jax.bench import blocks as blk
from convfirst_jax.bench import models as mdl
from convfirst_jax.bench.ceilings import Ceilings
from convfirst_jax.bench.common import (make_record, max_abs_diff, on_gpu, pallas_skip_note,
                                        random_normal, rotated_inputs, skipped_record)
from convfirst_jax.bench.layers import layer_op
from convfirst_jax.bench.options import (BlocksOptions, LabOptions, LayersOptions,
                                         ModelsOptions, TimingOptions)
from convfirst_jax.complexity import LayerCost, fused_block_bytes, roofline
from convfirst_jax.models.inference import inference_fn


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Notes(list):
    """Notes for results.md; each message is also printed once to stderr."""

    def add(self, msg: str) -> None:
        if msg not in self:
            log(msg)
            self.append(msg)


# ----------------------------------------------------------------------------- layers
def time_layers(layers: Sequence[LayerCost], *, group: str, batch_size: int, dtype: str,
                resolution: int, ceil: Ceilings, opts: TimingOptions, seed: Sequence[int],
                fused_floor: Callable[[list[LayerCost]], float] | None = None,
                block_sizes: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Time every layer standalone (waterline chart), then one aggregate record per block.

    ``fused_floor(block_layers)`` gives the floor of the block fused into one kernel
    (``roofline.fused_block_floor``); None leaves it out. ``block_sizes`` (block -> number
    of layers) restricts the aggregates to blocks whose every layer was timed.
    """
    recs: list[dict[str, Any]] = []
    peak, bw = ceil.peak_flops, ceil.bandwidth
    for i, layer in enumerate(layers):
        fn, make = layer_op(layer, batch_size, dtype)
        sets = rotated_inputs(make, [*seed, i], opts)
        timing = opts.time(fn, sets)
        nbytes = layer.bytes_total
        recs.append(make_record(
            suite="layers", name=layer.name, impl="xla", mode="inference", dtype=dtype,
            batch_size=batch_size, resolution=resolution, kind=layer.kind, ceil=ceil,
            timing=timing, flops=layer.flops, macs=layer.macs, nbytes=nbytes,
            params=layer.params, waterline_s=roofline.layer_floor(layer, peak, bw),
            group=group, block=layer.block or "",
            bound=roofline.bound(layer.flops, nbytes, peak, bw)))
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
        fused = fused_floor(ls) if fused_floor is not None else None
        recs.append({
            "suite": "layers", "name": name, "impl": "xla-layers-sum", "mode": "inference",
            "dtype": dtype, "batch_size": batch_size, "resolution": resolution, "kind": "block",
            "group": group, "status": "ok", "note": "sum of the block's standalone layer timings",
            "median_s": med, "p10_s": sum(p[1]["p10_s"] for p in pairs),
            "p90_s": sum(p[1]["p90_s"] for p in pairs), "flops": flops,
            "macs": sum(l.macs for l in ls), "bytes": sum(l.bytes_total for l in ls),
            "params": sum(l.params for l in ls), "ideal_s": roofline.ideal_latency(flops, peak),
            "waterline_s": floor, "fused_floor_s": fused,
            "latency_over_waterline": med / floor if floor else None,
            "latency_over_fused_floor": med / fused if fused else None,
            "efficiency": roofline.efficiency(flops, med, peak) if flops else None,
        })
    return recs


# ----------------------------------------------------------------------------- blocks
def run_blocks(opts: BlocksOptions, ceilings: dict[str, Ceilings],
               notes: Notes) -> list[dict[str, Any]]:
    """Suite "blocks": one conv-first block per configuration, every impl and batch size."""
    recs: list[dict[str, Any]] = []
    timing_opts = opts.run.timing
    grid = itertools.product(opts.dtypes, opts.channels, opts.resolutions, opts.kernel_sizes,
                             opts.expansions, opts.norms, opts.activations)
    for ci, (dtype, c, r, k, e, norm, act) in enumerate(grid):
        case = blk.BlockCase(channels=c, resolution=r, kernel_size=k, expansion=e,
                             group_width=opts.group_width, norm=norm, activation=act,
                             layer_scale=opts.layer_scale, dtype=dtype)
        ceil = ceilings[dtype]
        peak, bw = ceil.peak_flops, ceil.bandwidth
        for b in opts.batch_sizes:
            layers = blk.block_layer_costs(case, b)
            flops = sum(l.flops for l in layers)
            nbytes = sum(l.bytes_total for l in layers)
            wl = roofline.waterline(layers, peak, bw)
            fused = roofline.fused_block_floor(layers, peak, bw)

            def make(rng, b=b):
                return random_normal(rng, (b, r, r, c), dtype), blk.make_block_params(rng, case)

            sets = None
            ref_out: dict[str, Any] = {}
            for impl in opts.impls:
                common = dict(suite="blocks", name=case.label, impl=impl, mode="inference",
                              dtype=dtype, batch_size=b)
                if impl == "pallas" and not on_gpu():
                    notes.add(pallas_skip_note())
                    recs.append(skipped_record(note=pallas_skip_note(), **common))
                    continue
                fn = blk.block_impl_fn(impl, case)
                if sets is None:
                    sets = rotated_inputs(make, [timing_opts.seed, ci, b], timing_opts)
                log(f"[blocks] {case.label} {dtype} batch {b} impl {impl}")
                timing = timing_opts.time(
                    fn, sets, on_first=lambda out, i=impl: ref_out.__setitem__(i, out))
                diff = (max_abs_diff(ref_out[impl], ref_out["xla"])
                        if "xla" in ref_out and impl != "xla" else None)
                recs.append(make_record(
                    **common, resolution=r, kind="block", ceil=ceil, timing=timing,
                    flops=flops, macs=sum(l.macs for l in layers), nbytes=nbytes,
                    params=sum(l.params for l in layers), waterline_s=wl, fused_floor_s=fused,
                    max_abs_diff_vs_xla=diff, series=impl))
        if opts.layer_breakdown:
            b = max(opts.batch_sizes)
            log(f"[blocks] {case.label} {dtype} batch {b}: timing each unfused op standalone")
            recs += time_layers(
                blk.block_layer_costs(case, b), group=f"{case.label} {dtype}", batch_size=b,
                dtype=dtype, resolution=r, ceil=ceil, opts=timing_opts,
                seed=[timing_opts.seed, ci, 7919],
                fused_floor=lambda ls: roofline.fused_block_floor(ls, peak, bw))
    return recs


# ----------------------------------------------------------------------------- models
def _model_layer_breakdown(name: str, *, resolution: int, batch_size: int, dtype: str,
                           num_classes: int, ceil: Ceilings, opts: TimingOptions,
                           only: str | None = None) -> list[dict[str, Any]]:
    table = mdl.model_table(name, resolution, batch_size, dtype, num_classes)
    layers = [l for l in table.layers if only is None or re.search(only, l.name)]
    floor = None
    if mdl.has_conv_first_blocks(name):
        def floor(ls: list[LayerCost]) -> float:  # the kernel reads the BN-folded weights
            nbytes = fused_block_bytes(ls, batch=batch_size, dtype_bytes=table.dtype_bytes)
            return roofline.fused_block_floor(ls, ceil.peak_flops, ceil.bandwidth,
                                              nbytes=nbytes)
    if not layers:
        log(f"[layers] {name}: --only {only!r} matches none of its {len(table.layers)} layers")
        return []
    log(f"[layers] {name}: timing {len(layers)} ops standalone, batch {batch_size} {dtype}")
    return time_layers(layers, group=f"{name} @{resolution}px", batch_size=batch_size,
                       dtype=dtype, resolution=resolution, ceil=ceil, opts=opts,
                       seed=[opts.seed, 17], fused_floor=floor,
                       block_sizes={k: len(v) for k, v in table.blocks.items()})


def run_models(opts: ModelsOptions, ceilings: dict[str, Ceilings], notes: Notes, *,
               top1: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """Suite "models": whole-model inference (and train step) per impl, dtype and batch."""
    recs: list[dict[str, Any]] = []
    top1 = top1 or {}
    timing_opts = opts.run.timing
    res, ncls = opts.resolution, opts.num_classes
    outputs: dict[tuple, Any] = {}
    for mi, name in enumerate(opts.models):
        fam = mdl.family_label(name)
        for impl in opts.block_impls:
            series = fam if fam == "ResNet" else f"{fam}-{impl}"
            for dtype in opts.dtypes:
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
                                        seed=timing_opts.seed)
                fwd, state = inference_fn(model)
                for b in opts.batch_sizes:
                    table = mdl.model_table(name, res, b, dtype, ncls)
                    unfused, fused = mdl.model_floors(table, ceil)
                    # Rotate the images (weights are shared by every call, as in serving).
                    xs = rotated_inputs(lambda rng: (random_normal(rng, (b, res, res, 3), dtype),),
                                        [timing_opts.seed, mi, b], timing_opts)
                    sets = [(state, *x) for x in xs]
                    log(f"[models] {name} {impl} {dtype} batch {b}: inference")
                    okey = (name, dtype, b)
                    first: dict[str, Any] = {}
                    timing = timing_opts.time(fwd, sets,
                                              on_first=lambda out: first.setdefault("o", out))
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
                if opts.train_step:
                    step, state0 = mdl.train_step_fn(model)
                    for b in opts.batch_sizes:
                        table = mdl.model_table(name, res, b, dtype, ncls)

                        def make(rng, b=b):
                            return (random_normal(rng, (b, res, res, 3), dtype),
                                    jnp.asarray(rng.integers(0, ncls, (b,)), jnp.int32))

                        sets = [(*state0, *xy) for xy in rotated_inputs(
                            make, [timing_opts.seed, mi, b, 1], timing_opts)]
                        log(f"[models] {name} {impl} {dtype} batch {b}: train step")
                        timing = timing_opts.time(step, sets)
                        flops = mdl.TRAIN_FLOPS_FACTOR * table.flops
                        recs.append(make_record(
                            **common, mode="train", batch_size=b, resolution=res, kind="model",
                            ceil=ceil, timing=timing, flops=flops,
                            macs=mdl.TRAIN_FLOPS_FACTOR * table.macs, nbytes=table.bytes,
                            params=table.params, waterline_s=None, series=series,
                            note="ops = 3 x forward (fwd + bwd); no train waterline modelled"))
                        del sets
                del model, state
    if opts.compare_torch:
        recs += _torch_records(opts, ceilings, notes)
    if opts.waterline:
        dtype = opts.dtypes[0]
        for name in opts.models:
            recs += _model_layer_breakdown(
                name, resolution=res, batch_size=opts.waterline_batch or opts.batch_sizes[0],
                dtype=dtype, num_classes=ncls, ceil=ceilings[dtype], opts=timing_opts,
                only=opts.only)
    return recs


def _torch_records(opts: ModelsOptions, ceilings: dict[str, Ceilings],
                   notes: Notes) -> list[dict[str, Any]]:
    from convfirst_jax.bench import torch_compare as tc

    ok, why = tc.torch_available()
    if not ok:
        notes.add(why)
        return []
    if "bfloat16" not in ceilings:
        notes.add("--compare-torch: bfloat16 ceilings not measured; ideal/waterline of the "
                  "torch rows use the first dtype's ceilings")
    ceil = ceilings.get("bfloat16") or next(iter(ceilings.values()))
    t = opts.run.timing
    recs = []
    done = set()
    for name in opts.models:
        tname = tc.timm_name(name)
        if tname in done:
            continue
        done.add(tname)
        for b in opts.batch_sizes:
            log(f"[torch] timm {tname} batch {b} (torch.compile, channels_last, bf16 autocast)")
            try:
                timing, info = tc.time_timm(
                    name, batch_size=b, resolution=opts.resolution, num_classes=opts.num_classes,
                    warmup=t.warmup, repeats=t.repeats, min_sample_s=t.min_sample_s,
                    max_number=t.max_number, buffers=max(2, t.buffers or 4), seed=t.seed)
            except Exception as ex:  # a torch failure must not lose the JAX results
                notes.add(f"--compare-torch: timm {tname} failed: {type(ex).__name__}: {ex}")
                break
            table = mdl.model_table(tname, opts.resolution, b, "bfloat16", opts.num_classes)
            unfused, fused = mdl.model_floors(table, ceil)
            recs.append(make_record(
                suite="models", name=f"timm:{tname}", impl="torch", mode="inference",
                dtype="bfloat16", batch_size=b, resolution=opts.resolution, kind="model",
                ceil=ceil, timing=timing, flops=table.flops, macs=table.macs,
                nbytes=table.bytes, params=table.params, waterline_s=unfused,
                fused_floor_s=fused, series="timm-torch.compile", **info))
    return recs


# ----------------------------------------------------------------------------- layers
def run_layers(opts: LayersOptions, ceilings: dict[str, Ceilings],
               notes: Notes) -> list[dict[str, Any]]:
    """Suite "layers": every op of each model standalone, plus the whole model for reference."""
    recs: list[dict[str, Any]] = []
    for name in opts.models:
        recs += _model_layer_breakdown(name, resolution=opts.resolution,
                                       batch_size=opts.batch_size, dtype=opts.dtype,
                                       num_classes=opts.num_classes, ceil=ceilings[opts.dtype],
                                       opts=opts.run.timing, only=opts.only)
    return recs + run_models(opts.whole_models(), ceilings, notes)


def run_suite(opts: LabOptions, ceilings: dict[str, Ceilings], notes: Notes, *,
              top1: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The records of the suite ``opts`` describes."""
    if isinstance(opts, BlocksOptions):
        return run_blocks(opts, ceilings, notes)
    if isinstance(opts, ModelsOptions):
        return run_models(opts, ceilings, notes, top1=top1)
    return run_layers(opts, ceilings, notes)
