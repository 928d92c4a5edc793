"""Launch-table sweep with the static H100 model (no GPU): prints LAUNCH_TABLE rows.

For every launch key of the issue-9 configurations (bfloat16, batch 128), every candidate
(tile, hidden_chunk, num_warps, num_stages) is compiled for sm_90 and modelled by
``convfirst_jax.bench.static`` on every block style that shares the key (the key has no
norm/activation: gw1 keys serve the ConvNeXt LN-GELU and the ConvFirst affine-SiLU block,
gw8 keys the ConvFirst affine-SiLU block). A candidate that does not fit on an SM or spills
registers for any of them is rejected; the lowest summed "overlap" time wins (ties: "serial").
Keys that take the split plan (``pallas_kernels.tuning.block_plan``) are skipped: their
kernels take SPLIT_LAUNCH_TABLE, whose default rule the static report shows.

    PYTHONPATH=. python scripts/sweep_launch_static.py --gw 1 --json docs/results/static-h100/launch_sweep_gw1.json
    PYTHONPATH=. python scripts/sweep_launch_static.py --gw 8 --json docs/results/static-h100/launch_sweep_gw8.json

Needs the "static" extra (triton). Static model, not measured: confirm on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import tempfile

from convfirst_jax.bench import static
from pallas_kernels import tuning
from pallas_kernels.tuning import LaunchConfig, padded_channels

# Default candidates (--tiles / --chunks / --warps / --stages narrow or widen them). Tiles of
# 256 pixels pay off since the depthwise conv reuses each loaded input pixel across a column
# group of outputs (pallas_kernels.conv_stage.column_block).
TILES = (32, 64, 128, 256)
CHUNKS = (32, 64, 128)
WARPS = (4, 8)
STAGES = (2,)


@contextlib.contextmanager
def _quiet_stderr():
    """Triton prints whole PTX listings on a failed compile; keep the sweep readable."""
    fd = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(fd, 2)
            os.close(fd)


def sweep(batch: int = 128, dtype: str = "bfloat16", group_widths=(1, 8),
          verbose: bool = True, tiles=TILES, chunks=CHUNKS, warps_=WARPS, stages_=STAGES,
          channels=None) -> list[dict]:
    keyed: dict[tuple, list] = {}
    for cfg in static.brief_configs(batch, dtype):
        if cfg.gw in group_widths and (not channels or cfg.C in channels):
            key = (padded_channels(cfg.C), cfg.k, cfg.gw, cfg.E * cfg.C, cfg.dtype)
            if tuning.block_plan(*key) != "fused":
                continue  # the split plan's kernels ignore LAUNCH_TABLE (SPLIT_LAUNCH_TABLE)
            keyed.setdefault(key, []).append(cfg)
    hw = static.H100Model()
    workdir = tempfile.mkdtemp(prefix="convfirst-sweep-")
    results = []
    for key, cfgs in keyed.items():
        best, tried = None, []
        for tile, hc, warps, stages in itertools.product(tiles, chunks, warps_, stages_):
            if hc > key[3]:
                continue
            entry = dict(launch=(tile, hc, warps, stages), ok=True, overlap_us=0.0,
                         serial_us=0.0, per_config={})
            try:
                with static.launch_row(tuning.LAUNCH_TABLE, key,
                                       LaunchConfig(tile, hc, warps, stages)):
                    for cfg in cfgs:
                        with _quiet_stderr():
                            row = static.analyse(cfg, hw, workdir)
                        fits = row["ctas_per_sm"] > 0 and not (row["spill_st"] or row["spill_ld"])
                        entry["ok"] &= fits
                        entry["overlap_us"] += row["model_overlap_us"]
                        entry["serial_us"] += row["model_serial_us"]
                        entry["per_config"][cfg.name] = dict(
                            regs=row["regs"], spill=row["spill_st"],
                            ctas_per_sm=row["ctas_per_sm"], overlap_us=row["model_overlap_us"],
                            serial_us=row["model_serial_us"])
            except Exception as e:  # noqa: BLE001 - a candidate that does not compile
                entry.update(ok=False, error=str(e)[:120])
            tried.append(entry)
            if entry["ok"] and (best is None or (entry["overlap_us"], entry["serial_us"]) <
                                (best["overlap_us"], best["serial_us"])):
                best = entry
        results.append(dict(key=key, configs=[c.name for c in cfgs], best=best, tried=tried))
        if verbose:
            print(f"{key}: best {best and best['launch']} "
                  f"{best and {n: round(v['overlap_us']) for n, v in best['per_config'].items()}}",
                  flush=True)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--gw", type=int, action="append", default=None,
                    help="group widths to sweep (default 1 and 8)")
    ap.add_argument("--channels", type=int, action="append", default=None,
                    help="only the brief configurations with these C (default all)")
    ints = lambda text: tuple(int(v) for v in text.split(","))  # noqa: E731
    ap.add_argument("--tiles", type=ints, default=TILES, help="e.g. 128,256")
    ap.add_argument("--chunks", type=ints, default=CHUNKS, help="hidden chunks, e.g. 64,128")
    ap.add_argument("--warps", type=ints, default=WARPS, help="e.g. 4,8")
    ap.add_argument("--stages", type=ints, default=STAGES, help="e.g. 2,3")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    ok, why = static.triton_available()
    if not ok:
        raise SystemExit(why)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    results = sweep(args.batch, args.dtype, tuple(args.gw or (1, 8)), tiles=args.tiles,
                    chunks=args.chunks, warps_=args.warps, stages_=args.stages,
                    channels=tuple(args.channels or ()))
    print("\n# LAUNCH_TABLE rows (pallas_kernels/tuning.py):")
    for r in results:
        if r["best"]:
            t, hc, w, st = r["best"]["launch"]
            per = ", ".join(f"{v['overlap_us']:.0f}" for v in r["best"]["per_config"].values())
            print(f"    {tuple(r['key'])!r}: LaunchConfig({t}, {hc}, {w}, {st}),  # {per} us")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(environment=static.environment(), command=" ".join(sys.argv),
                           batch=args.batch, dtype=args.dtype, results=results), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
