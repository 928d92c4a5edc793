"""Split-plan MLP sweep with the static H100 model (no GPU): two GEMMs vs the fused MLP kernel.

For each configuration on the split plan (``pallas_kernels.tuning.block_plan``), the expand and
project GEMMs (``fused_mlp=False``) and every fused MLP kernel candidate
(:data:`SPLIT_MLP_CANDIDATES`) are compiled for sm_90 and modelled by
``convfirst_jax.bench.static``; the result chose the ``fused_mlp`` default of
``tuning.default_split_launch_config`` (docs/results/static-h100/split_mlp_sweep.json):

    PYTHONPATH=. python scripts/sweep_split_mlp_static.py \
        --config C=256,HW=14,k=3,gw=1,norm=layernorm,act=gelu,ls=1 \
        --config C=256,HW=14,k=3,gw=1,norm=affine,act=silu,ls=0 \
        --config C=512,HW=7,k=3,gw=1,norm=layernorm,act=gelu,ls=1 \
        --config C=512,HW=7,k=3,gw=1,norm=affine,act=silu,ls=0 \
        --json docs/results/static-h100/split_mlp_sweep.json

With ``--gemm`` it sweeps the GEMM form's tiles instead (:data:`SPLIT_GEMM_CANDIDATES`), for
the configurations that keep the two GEMMs; the result chose ``expand_block_n`` of the default
rule (docs/results/static-h100/split_gemm_sweep.json):

    PYTHONPATH=. python scripts/sweep_split_mlp_static.py --gemm \
        --config C=512,HW=7,k=3,gw=1,norm=layernorm,act=gelu,ls=1 \
        --config C=512,HW=7,k=3,gw=1,norm=affine,act=silu,ls=0 \
        --config C=512,HW=7,k=7,gw=1,norm=layernorm,act=gelu,ls=1 \
        --config C=512,HW=7,k=3,gw=8,norm=affine,act=silu,ls=0 \
        --json docs/results/static-h100/split_gemm_sweep.json

With ``--project`` it sweeps the project GEMM's columns, accumulators and warps
(:data:`SPLIT_PROJECT_CANDIDATES`, the expand as the default rule has it); the result chose the
default rule's 256-column project in four 64-column accumulators
(docs/results/static-h100/split_project_sweep.json). With ``--wide-rows`` it compares
``tuning.GEMM_WIDE_ROWS`` (calls of that many rows keep their GEMM column tiles) against
halving the columns towards MIN_PROGRAMS at every size, over ``--batches``
(docs/results/static-h100/gemm_width_probe.json):

    PYTHONPATH=. python scripts/sweep_split_mlp_static.py --project \
        --config C=512,HW=7,k=3,gw=1,norm=layernorm,act=gelu,ls=1 \
        --config C=512,HW=7,k=3,gw=1,norm=affine,act=silu,ls=0 \
        --json docs/results/static-h100/split_project_sweep.json
    PYTHONPATH=. python scripts/sweep_split_mlp_static.py --wide-rows --batches 16 32 64 128 \
        --config C=512,HW=7,k=7,gw=1,norm=layernorm,act=gelu,ls=1 \
        --config C=512,HW=7,k=3,gw=8,norm=affine,act=silu,ls=0 \
        --config C=256,HW=14,k=3,gw=1,norm=affine,act=silu,ls=0 \
        --json docs/results/static-h100/gemm_width_probe.json

With ``--conv`` it sweeps the conv + norm kernel's pixels per program, warps and channel
blocks (:data:`SPLIT_CONV_CANDIDATES`); the result chose the 16-bit grouped convs' 32 pixels at
4 warps with all channels (LayerNorm; ``tuning.GROUPED_SPLIT_CONV_ELEMENTS``,
``tuning.split_conv_warps``) and 128 pixels at 4 warps of 32 channels with the affine norm
(``tuning.CONV_BLOCK_CHANNELS``, ``tuning.CONV_BLOCK_TILE``;
docs/results/static-h100/split_conv_sweep.json):

    PYTHONPATH=. python scripts/sweep_split_mlp_static.py --conv \
        --config C=512,HW=7,k=3,gw=8,norm=affine,act=silu,ls=0 \
        --config C=512,HW=7,k=7,gw=8,norm=affine,act=silu,ls=0 \
        --json docs/results/static-h100/split_conv_sweep.json

Needs the "static" extra (triton). Static model, not measured: confirm on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses as dc
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from convfirst_jax.bench import static
from pallas_kernels import tuning

#: Fused MLP kernel candidates (mlp_block_m, mlp_warps, hidden_chunk, mlp_stages, mlp_split):
#: 128-pixel programs need 8 or 16 warps (the (128, 256) f32 accumulator alone is 128
#: registers per thread at 8 warps).
SPLIT_MLP_CANDIDATES = tuple((bm, w, hc, st, sp) for bm, w, sp in (
    (128, 8, 1), (128, 8, 2), (128, 16, 1), (128, 16, 2), (64, 4, 1), (64, 8, 1))
    for hc in (32, 64, 128) for st in (1, 2, 3))


def _setup(hw: static.H100Model | None, workdir: str | None,
           prefix: str) -> tuple[static.H100Model, str]:
    """Triton present (else RuntimeError), the H100 model and a work directory."""
    ok, why = static.triton_available()
    if not ok:
        raise RuntimeError(why)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return hw or static.H100Model(), workdir or tempfile.mkdtemp(prefix=prefix)


def sweep_split_mlp(configs: Sequence[static.StaticConfig], hw: static.H100Model | None = None,
                    workdir: str | None = None, verbose: bool = False,
                    candidates: Sequence[tuple[int, ...]] = SPLIT_MLP_CANDIDATES,
                    ) -> list[dict[str, Any]]:
    """The split plan's two MLP forms on the static model, per configuration: the two GEMMs
    (``fused_mlp`` False) and every fused MLP kernel candidate ``(mlp_block_m, mlp_warps,
    hidden_chunk, mlp_stages, mlp_split)``, each a
    :data:`pallas_kernels.tuning.SPLIT_LAUNCH_TABLE` row
    (the default rule with those fields) modelled by :func:`analyse`; ``MLP_MIN_PROGRAMS``
    is lifted so grids below one program per SM are modelled too (see ``model_waves_us``);
    candidates over the accumulator budget (``MLP_ACC_ELEMENTS``) are skipped.
    ``best``: the spill-free candidate with the smallest "overlap" time (ties: "serial")."""
    hw, workdir = _setup(hw, workdir, "convfirst-split-sweep-")

    @contextlib.contextmanager
    def table_row(key, lc):
        """The candidate row, with MLP_MIN_PROGRAMS lifted so small grids are modelled too."""
        min_programs, tuning.MLP_MIN_PROGRAMS = tuning.MLP_MIN_PROGRAMS, 1
        try:
            with static.launch_row(tuning.SPLIT_LAUNCH_TABLE, key, lc):
                yield
        finally:
            tuning.MLP_MIN_PROGRAMS = min_programs

    def entry(cfg, key, lc):
        with table_row(key, lc):
            try:
                row = static.analyse(cfg, hw, workdir)
            except Exception as e:  # noqa: BLE001 - a candidate that does not compile
                return dict(ok=False, error=f"{type(e).__name__}: {str(e)[:160]}")
        mlp = [k for k in row["kernels"] if k["kernel"] != "conv_norm"]
        spill = row["spill_st"] or row["spill_ld"]
        return dict(ok=row["ctas_per_sm"] > 0 and not spill, launch=row["launch"],
                    regs=[k["regs"] for k in mlp], spill_st=row["spill_st"],
                    smem_kib=[round(k["smem_kib"], 1) for k in mlp],
                    ctas_per_sm=[k["ctas_per_sm"] for k in mlp],
                    grid=[k["grid"] for k in mlp], waves=[k["waves"] for k in mlp],
                    mlp_us=sum(k["model_overlap_us"] for k in mlp),
                    overlap_us=row["model_overlap_us"], serial_us=row["model_serial_us"],
                    waves_us=row["model_waves_us"], pct_floor=row["pct_floor_overlap"],
                    l2_mb=row["l2_mb"], hbm_mb=row["hbm_mb"], bottleneck=row["bottleneck"])

    results = []
    for cfg in configs:
        key = (tuning.padded_channels(cfg.C), cfg.k, cfg.gw, cfg.E * cfg.C, cfg.dtype)
        if tuning.block_plan(*key) != "split":
            continue
        base = tuning.default_split_launch_config(*key)
        gemm = entry(cfg, key, dc.replace(base, fused_mlp=False))
        tried = []
        for cand in candidates:
            bm, w, hc, st, sp = cand
            if bm * key[0] > tuning.MLP_ACC_ELEMENTS:  # the accumulator's register budget
                continue
            e = entry(cfg, key, dc.replace(base, fused_mlp=True, mlp_block_m=bm, mlp_warps=w,
                                           hidden_chunk=hc, mlp_stages=st, mlp_split=sp))
            tried.append(dict(e, candidate=cand))
            if verbose:
                print(f"  {cfg.name} {cand}: " + (e.get("error", "")[:80] or
                      f"{e['overlap_us']:.1f} us, regs {e['regs']} spill {e['spill_st']}"),
                      flush=True)
        fits = [t for t in tried if t["ok"]]
        best = min(fits, key=lambda t: (t["overlap_us"], t["serial_us"])) if fits else None
        results.append(dict(cfg=cfg.name, config=dc.asdict(cfg), key=key, gemm=gemm,
                            best=best, tried=tried))
        if verbose:
            print(f"{cfg.name}: gemm {gemm.get('overlap_us', 0):.1f} us; best "
                  f"{best and best['candidate']} {best and round(best['overlap_us'], 1)} us",
                  flush=True)
    return results


#: GEMM-form candidates (block_m, expand_block_n, expand_split, block_n, column_split,
#: num_warps, num_stages) for the blocks whose MLP stays two GEMMs (``fused_mlp`` False).
SPLIT_GEMM_CANDIDATES = tuple(
    (bm, ebn, es, bn, cs, w, st)
    for bm, w in ((128, 8), (128, 16), (64, 4), (256, 8))
    for ebn, es in ((128, 1), (256, 1), (256, 2))
    for bn, cs in ((256, 2),)
    for st in (2, 3))


def sweep_split_gemm(configs: Sequence[static.StaticConfig], hw: static.H100Model | None = None,
                     workdir: str | None = None, verbose: bool = False,
                     candidates: Sequence[tuple[int, ...]] = SPLIT_GEMM_CANDIDATES,
                     ) -> list[dict[str, Any]]:
    """The expand and project GEMMs' tiles on the static model, for the configurations whose
    default split launch keeps them (``fused_mlp`` False): every candidate of
    :data:`SPLIT_GEMM_CANDIDATES` as a :data:`pallas_kernels.tuning.SPLIT_LAUNCH_TABLE` row
    (the default rule with those fields) modelled by :func:`static.analyse`. ``best``: the
    candidate whose GEMMs do not spill (the conv + norm kernel's spills, e.g. gw8's, are the
    same in every candidate) with the smallest "overlap" time (ties: "serial", then fewer
    registers)."""
    hw, workdir = _setup(hw, workdir, "convfirst-gemm-sweep-")
    results = []
    for cfg in configs:
        key = (tuning.padded_channels(cfg.C), cfg.k, cfg.gw, cfg.E * cfg.C, cfg.dtype)
        base = tuning.default_split_launch_config(*key)
        if tuning.block_plan(*key) != "split" or base.fused_mlp:
            continue
        tried = []
        for cand in candidates:
            bm, ebn, es, bn, cs, w, st = cand
            lc = dc.replace(base, block_m=bm, expand_block_n=ebn, expand_split=es, block_n=bn,
                            column_split=cs, num_warps=w, num_stages=st)
            with static.launch_row(tuning.SPLIT_LAUNCH_TABLE, key, lc):
                try:
                    row = static.analyse(cfg, hw, workdir)
                except Exception as e:  # noqa: BLE001 - a candidate that does not compile
                    tried.append(dict(candidate=cand, ok=False,
                                      error=f"{type(e).__name__}: {str(e)[:160]}"))
                    continue
            gemms = [k for k in row["kernels"] if k["kernel"] in ("expand", "project")]
            gemm_spill = sum(k["spill_st"] + k["spill_ld"] for k in gemms)
            e = dict(candidate=cand, ok=all(k["ctas_per_sm"] > 0 for k in gemms)
                     and not gemm_spill, launch=row["launch"],
                     regs=[k["regs"] for k in gemms], gemm_spill_bytes=gemm_spill,
                     spill_st=row["spill_st"],
                gemm_us={k["kernel"]: k["model_overlap_us"] for k in gemms},
                overlap_us=row["model_overlap_us"], serial_us=row["model_serial_us"],
                waves_us=row["model_waves_us"], pct_floor=row["pct_floor_overlap"],
                l2_mb=row["l2_mb"])
            tried.append(e)
            if verbose:
                print(f"  {cfg.name} {cand}: {e['overlap_us']:.1f} us, regs {e['regs']} "
                      f"spill {e['spill_st']}", flush=True)
        fits = [t for t in tried if t["ok"]]
        best = min(fits, key=lambda t: (round(t["overlap_us"], 1), round(t["serial_us"], 1),
                                        max(t["regs"]))) if fits else None
        results.append(dict(cfg=cfg.name, config=dc.asdict(cfg), key=key, best=best,
                            tried=tried))
        if verbose:
            print(f"{cfg.name}: best {best and best['candidate']} "
                  f"{best and round(best['overlap_us'], 1)} us", flush=True)
    return results


#: Project GEMM candidates (block_n, column_split, num_warps) for ``--project``.
SPLIT_PROJECT_CANDIDATES = ((128, 1, 8), (128, 2, 8), (256, 2, 8), (256, 4, 8), (256, 4, 16))


def _gemm_entry(cfg: static.StaticConfig, row: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One modelled split launch: its GEMM kernels' registers, spills and times, the block's."""
    gemms = [k for k in row.get("kernels", []) if k["kernel"] in ("expand", "project", "mlp")]
    return dict(extra, launch=row["launch"], plan=row.get("plan", "fused"),
                regs={k["kernel"]: k["regs"] for k in gemms},
                spill_bytes={k["kernel"]: k["spill_st"] + k["spill_ld"] for k in gemms},
                grid={k["kernel"]: k["grid"] for k in gemms},
                gemm_us={k["kernel"]: k["model_overlap_us"] for k in gemms},
                overlap_us=row["model_overlap_us"], serial_us=row["model_serial_us"],
                waves_us=row["model_waves_us"], pct_floor=row["pct_floor_overlap"])


def sweep_split_project(configs: Sequence[static.StaticConfig],
                        hw: static.H100Model | None = None, workdir: str | None = None,
                        verbose: bool = False,
                        candidates: Sequence[tuple[int, int, int]] = SPLIT_PROJECT_CANDIDATES,
                        ) -> list[dict[str, Any]]:
    """The project GEMM's (block_n, column_split, num_warps) on the static model, the rest of
    the default split launch unchanged (both GEMMs share num_warps). ``best``: the spill-free
    candidate with the smallest "overlap" time (ties: whole waves, then the candidates at
    least 32 registers under 255 -- XLA's own Triton may allocate about 30 more than pip
    Triton -- then fewer warps)."""
    hw, workdir = _setup(hw, workdir, "convfirst-project-sweep-")
    results = []
    for cfg in configs:
        key = (tuning.padded_channels(cfg.C), cfg.k, cfg.gw, cfg.E * cfg.C, cfg.dtype)
        base = tuning.default_split_launch_config(*key)
        if tuning.block_plan(*key) != "split" or base.fused_mlp:
            continue
        tried = []
        for bn, cs, warps in candidates:
            lc = dc.replace(base, block_n=bn, column_split=cs, num_warps=warps)
            with static.launch_row(tuning.SPLIT_LAUNCH_TABLE, key, lc):
                row = static.analyse(cfg, hw, workdir)
            e = _gemm_entry(cfg, row, candidate=(bn, cs, warps))
            e["ok"] = not sum(e["spill_bytes"].values())
            tried.append(e)
            if verbose:
                print(f"  {cfg.name} {(bn, cs, warps)}: project {e['gemm_us']['project']:.1f} "
                      f"us, block {e['overlap_us']:.1f} / waves {e['waves_us']:.1f} us, regs "
                      f"{e['regs']}, spills {e['spill_bytes']}", flush=True)
        fits = [t for t in tried if t["ok"]]
        best = min(fits, key=lambda t: (round(t["overlap_us"], 1), round(t["waves_us"], 1),
                                        max(t["regs"].values()) > 255 - 32,
                                        t["candidate"][2])) if fits else None
        results.append(dict(cfg=cfg.name, config=dc.asdict(cfg), key=key, best=best,
                            tried=tried))
    return results


def compare_wide_rows(configs: Sequence[static.StaticConfig], batches: Sequence[int],
                      hw: static.H100Model | None = None, workdir: str | None = None,
                      verbose: bool = False) -> list[dict[str, Any]]:
    """Each configuration at each batch with ``tuning.GEMM_WIDE_ROWS`` as committed ("wide")
    and with it out of reach, so every GEMM halves its columns towards MIN_PROGRAMS ("halve",
    the rule before 2026-12-07). ``best``: "wide" when it is not slower in the overlap figure
    nor in the whole-wave one."""
    hw, workdir = _setup(hw, workdir, "convfirst-wide-rows-")
    results = []
    for cfg in configs:
        for n in batches:
            c = dc.replace(cfg, N=int(n))
            rows = {}
            for label, wide_rows in (("wide", tuning.GEMM_WIDE_ROWS), ("halve", 1 << 62)):
                with _patched(tuning, "GEMM_WIDE_ROWS", wide_rows):
                    rows[label] = _gemm_entry(c, static.analyse(c, hw, workdir))
            w, h = rows["wide"], rows["halve"]
            entry = dict(cfg=c.name, config=dc.asdict(c), rows=c.N * c.H * c.W, **rows,
                         best="wide" if (w["overlap_us"] <= h["overlap_us"] + 0.05
                                         and w["waves_us"] <= h["waves_us"] + 0.05)
                         else "halve" if (h["overlap_us"] <= w["overlap_us"] + 0.05
                                          and h["waves_us"] <= w["waves_us"] + 0.05)
                         else "mixed")
            results.append(entry)
            if verbose:
                print(f"  {c.name} N={n}: wide {w['overlap_us']:.1f} / {w['waves_us']:.1f} us "
                      f"({w['launch']}), halve {h['overlap_us']:.1f} / {h['waves_us']:.1f} us "
                      f"({h['launch']}): {entry['best']}", flush=True)
    return results


def compare_mlp_form(configs: Sequence[static.StaticConfig], batches: Sequence[int],
                     hw: static.H100Model | None = None, workdir: str | None = None,
                     verbose: bool = False) -> list[dict[str, Any]]:
    """Each configuration whose default split launch fuses the MLP, at each batch: the launch
    ``split_launch_config`` gives ("rule"), the fused MLP kernel forced on with its programs
    halved (not below MIN_GEMM_BLOCK_M pixels) until there are MIN_PROGRAMS of them, the rule
    before 2026-12-07 ("fused, halved"), and the two GEMMs forced ("gemms")."""
    hw, workdir = _setup(hw, workdir, "convfirst-mlp-form-")
    results = []
    for cfg in configs:
        key = (tuning.padded_channels(cfg.C), cfg.k, cfg.gw, cfg.E * cfg.C, cfg.dtype)
        base = tuning.default_split_launch_config(*key)
        if tuning.block_plan(*key) != "split" or not base.fused_mlp:
            continue
        for n in batches:
            c = dc.replace(cfg, N=int(n))
            rows = c.N * c.H * c.W
            mlp_m = base.mlp_block_m
            while mlp_m > tuning.MIN_GEMM_BLOCK_M and -(-rows // mlp_m) < tuning.MIN_PROGRAMS:
                mlp_m //= 2
            entry = dict(cfg=c.name, config=dc.asdict(c), rows=rows)
            forms = (("rule", None), ("fused, halved", dict(fused_mlp=True, mlp_block_m=mlp_m)),
                     ("gemms", dict(fused_mlp=False)))
            for label, fields in forms:
                scope = (contextlib.nullcontext() if fields is None else _forced_split(
                    key, dc.replace(base, **fields)))
                with scope:
                    entry[label] = _gemm_entry(c, static.analyse(c, hw, workdir))
            results.append(entry)
            if verbose:
                print(f"  {c.name} N={n}: " + "; ".join(
                    f"{label} {entry[label]['overlap_us']:.1f} / {entry[label]['waves_us']:.1f}"
                    f" us ({entry[label]['launch']})" for label, _ in forms), flush=True)
    return results


@contextlib.contextmanager
def _forced_split(key: tuple, lc: tuning.SplitLaunchConfig):
    """``lc`` exactly, at every size: a table row and split_launch_config's shrinking off."""
    real = tuning.split_launch_config

    def fixed(*args: Any, **kwargs: Any) -> tuning.SplitLaunchConfig:
        got = real(*args, **kwargs)
        if tuple(args[:5]) != key:
            return got
        return dc.replace(got, fused_mlp=lc.fused_mlp, mlp_block_m=lc.mlp_block_m)

    from pallas_kernels import fused_block, split_block  # they import the function by name
    with contextlib.ExitStack() as stack:
        stack.enter_context(static.launch_row(tuning.SPLIT_LAUNCH_TABLE, key, lc))
        for module in (tuning, split_block, fused_block):
            stack.enter_context(_patched(module, "split_launch_config", fixed))
        yield


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any):
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


#: Conv + norm kernel candidates (conv_tile, conv_warps, conv_channel_blocks) for ``--conv``;
#: channel blocks take effect for 16-bit grouped convs with the affine norm only.
SPLIT_CONV_CANDIDATES = (
    tuple((t, w, 1) for t in (16, 32) for w in (4, 8, 16))
    + ((64, 4, 16), (128, 4, 8), (128, 8, 8), (128, 4, 16), (128, 8, 16), (256, 8, 16),
       (128, 4, 32)))


def sweep_split_conv(configs: Sequence[static.StaticConfig], hw: static.H100Model | None = None,
                     workdir: str | None = None, verbose: bool = False,
                     candidates: Sequence[tuple[int, int, int]] = SPLIT_CONV_CANDIDATES,
                     ) -> list[dict[str, Any]]:
    """The split plan's conv + norm kernel (pixels per program, warps) on the static model,
    the rest of the default split launch unchanged; ``split_launch_config`` still halves the
    tile until the grid has MIN_PROGRAMS programs (C512 7x7 batch 128: 32 pixels at most).
    ``best``: the candidate whose conv + norm kernel is fastest charged for whole waves (it
    runs alone, ahead of the GEMMs; ties: the "overlap" time); the all-channel ones spill at
    255 registers for gw8, so spills are reported, not filtered."""
    hw, workdir = _setup(hw, workdir, "convfirst-conv-sweep-")
    results = []
    for cfg in configs:
        key = (tuning.padded_channels(cfg.C), cfg.k, cfg.gw, cfg.E * cfg.C, cfg.dtype)
        if tuning.block_plan(*key) != "split":
            continue
        base = tuning.default_split_launch_config(*key)
        tried = []
        for tile, warps, blocks in candidates:
            with static.launch_row(tuning.SPLIT_LAUNCH_TABLE, key,
                                   dc.replace(base, conv_tile=tile, conv_warps=warps,
                                              conv_channel_blocks=blocks)):
                row = static.analyse(cfg, hw, workdir)
            k = row["kernels"][0]
            tried.append(dict(candidate=(tile, warps, blocks), conv_norm_us=k["model_overlap_us"],
                              conv_norm_waves_us=k.get("model_waves_us"),
                              regs=k["regs"], spill_st=k["spill_st"], spill_ld=k["spill_ld"],
                              ctas_per_sm=k["ctas_per_sm"], grid=k["grid"],
                              overlap_us=row["model_overlap_us"],
                              serial_us=row["model_serial_us"]))
            if verbose:
                print(f"  {cfg.name} {tile}/{warps}w/{blocks}b: conv_norm "
                      f"{k['model_overlap_us']:.1f} us, "
                      f"regs {k['regs']}, spill {k['spill_st']} B, grid {k['grid']}", flush=True)
        best = min(tried, key=lambda t: (round(t["conv_norm_waves_us"] or 0.0, 1),
                                         round(t["conv_norm_us"], 1)))
        results.append(dict(cfg=cfg.name, config=dc.asdict(cfg), key=key, best=best,
                            tried=tried))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", required=True,
                    help="as for `python -m convfirst_jax.bench static --config` (repeatable)")
    ap.add_argument("--batch", type=int, default=128, help="N (default 128)")
    ap.add_argument("--dtype", default="bfloat16", choices=static.DTYPE_NAMES)
    ap.add_argument("--keep", default=None, help="directory for TTIR/TTGIR/PTX/cubin/SASS")
    ap.add_argument("--json", default=None, help="write every entry to this JSON file")
    ap.add_argument("--gemm", action="store_true",
                    help="sweep the GEMM form's tiles (SPLIT_GEMM_CANDIDATES) of the "
                         "configurations that keep the two GEMMs, instead of the MLP forms")
    ap.add_argument("--conv", action="store_true",
                    help="sweep the conv + norm kernel's pixels, warps and channel blocks "
                         "(SPLIT_CONV_CANDIDATES) instead")
    ap.add_argument("--project", action="store_true",
                    help="sweep the project GEMM's columns, accumulators and warps "
                         "(SPLIT_PROJECT_CANDIDATES) instead")
    ap.add_argument("--wide-rows", action="store_true",
                    help="compare tuning.GEMM_WIDE_ROWS against always halving the GEMM "
                         "columns, at every --batches size, instead")
    ap.add_argument("--mlp-form", action="store_true",
                    help="compare the fused MLP kernel, its halved programs and the two GEMMs "
                         "at every --batches size, instead")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64, 128],
                    help="batch sizes for --wide-rows / --mlp-form (default 16 32 64 128)")
    args = ap.parse_args(argv)
    if sum((args.gemm, args.conv, args.project, args.wide_rows, args.mlp_form)) > 1:
        raise SystemExit("sweep_split_mlp_static: pick one of --gemm, --conv, --project, "
                         "--wide-rows, --mlp-form")
    try:
        configs = [static.parse_config(c, N=args.batch, dtype=args.dtype) for c in args.config]
    except (ValueError, TypeError) as e:
        raise SystemExit(f"sweep_split_mlp_static: bad --config: {e}") from None
    ok, why = static.triton_available()
    if not ok:
        raise SystemExit(why)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    hw = static.H100Model()
    if args.wide_rows or args.mlp_form:
        compare = compare_wide_rows if args.wide_rows else compare_mlp_form
        results = compare(configs, args.batches, hw, args.keep, verbose=True)
    else:
        sweep = (sweep_split_conv if args.conv else sweep_split_gemm if args.gemm
                 else sweep_split_project if args.project else sweep_split_mlp)
        results = sweep(configs, hw, args.keep, verbose=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(environment=static.environment(), hardware=dc.asdict(hw),
                           command=shlex.join(["python", *sys.argv]), results=results),
                      fh, indent=1, default=str)
    return 0 if args.mlp_form or all(r.get("best") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
