"""Launch-table sweep with the static H100 model (no GPU): prints LAUNCH_TABLE rows.

For every launch key of the issue-9 configurations (bfloat16, batch 128; gw1 keys scored on
the ConvNeXt LN-GELU block, gw8 keys on the ConvFirst affine-SiLU block -- the key has no
norm/activation), every candidate (tile, hidden_chunk, num_warps, num_stages) is compiled
for sm_90 and modelled by ``convfirst_jax.bench.static``; candidates that do not fit on an
SM or spill registers are rejected, the lowest "overlap" time wins (ties: "serial").

    PYTHONPATH=. python scripts/sweep_launch_static.py --json docs/results/static-h100/launch_sweep.json

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

TILES = (32, 64, 128)
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


def sweep(batch: int = 128, dtype: str = "bfloat16", verbose: bool = True) -> list[dict]:
    chosen = {}
    for cfg in static.brief_configs(batch, dtype):
        if cfg.gw == 1 and cfg.norm != "layernorm":
            continue  # gw1 keys are shared by both styles; score on the ConvNeXt block
        key = (padded_channels(cfg.C), cfg.k, cfg.gw, cfg.E * cfg.C, cfg.dtype)
        chosen[key] = cfg
    hw = static.H100Model()
    workdir = tempfile.mkdtemp(prefix="convfirst-sweep-")
    results = []
    for key, cfg in chosen.items():
        best, tried = None, []
        for tile, hc, warps, stages in itertools.product(TILES, CHUNKS, WARPS, STAGES):
            if hc > cfg.E * cfg.C:
                continue
            tuning.LAUNCH_TABLE[key] = LaunchConfig(tile, hc, warps, stages)
            try:
                with _quiet_stderr():
                    row = static.analyse(cfg, hw, workdir)
            except Exception as e:  # noqa: BLE001 - a candidate that does not compile
                tried.append(dict(launch=(tile, hc, warps, stages), error=str(e)[:120]))
                continue
            finally:
                tuning.LAUNCH_TABLE.pop(key, None)
            ok = row["ctas_per_sm"] > 0 and not (row["spill_st"] or row["spill_ld"])
            entry = dict(launch=(tile, hc, warps, stages), ok=ok, regs=row["regs"],
                         spill=row["spill_st"], ctas_per_sm=row["ctas_per_sm"],
                         overlap_us=row["model_overlap_us"], serial_us=row["model_serial_us"])
            tried.append(entry)
            if ok and (best is None or (entry["overlap_us"], entry["serial_us"]) <
                       (best["overlap_us"], best["serial_us"])):
                best = entry
        results.append(dict(key=key, config=cfg.name, best=best, tried=tried))
        if verbose:
            print(f"{cfg.name}: best {best}", flush=True)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    ok, why = static.triton_available()
    if not ok:
        raise SystemExit(why)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    results = sweep(args.batch, args.dtype)
    print("\n# LAUNCH_TABLE rows (pallas_kernels/tuning.py):")
    for r in results:
        if r["best"]:
            t, hc, w, st = r["best"]["launch"]
            print(f"    {tuple(r['key'])!r}: LaunchConfig({t}, {hc}, {w}, {st}),"
                  f"  # {r['config']}: {r['best']['overlap_us']:.0f} us overlap")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(environment=static.environment(), batch=args.batch,
                           dtype=args.dtype, results=results), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
