"""Split-plan conv + norm kernel sweep with the static H100 model (no GPU): pixels per program
and warps of the conv + norm kernel, the rest of the default split launch unchanged.

    PYTHONPATH=. python scripts/sweep_split_conv_static.py \
        --config C=512,HW=7,k=3,gw=8,norm=affine,act=silu,ls=0 \
        --config C=512,HW=7,k=7,gw=8,norm=affine,act=silu,ls=0 \
        --json docs/results/static-h100/split_conv_sweep.json

The result chose the grouped blocks' conv + norm launch of
``tuning.default_split_launch_config`` (``GROUPED_SPLIT_CONV_ELEMENTS``, 4 warps). The conv
tile is still halved by ``tuning.split_launch_config`` until the grid has MIN_PROGRAMS
programs (C512 7x7 batch 128: 32 pixels at most). Needs the "static" extra (triton).
Static model, not measured: confirm on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses as dc
import json
import os
import shlex
import sys
import tempfile

from convfirst_jax.bench import static
from pallas_kernels import tuning

#: (conv_tile, conv_warps) candidates
CANDIDATES = ((16, 4), (16, 8), (16, 16), (32, 4), (32, 8), (32, 16))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", required=True)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ok, why = static.triton_available()
    if not ok:
        raise SystemExit(why)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    hw, workdir = static.H100Model(), tempfile.mkdtemp(prefix="convfirst-conv-sweep-")
    results = []
    for text in args.config:
        cfg = static.parse_config(text, N=128)
        key = (tuning.padded_channels(cfg.C), cfg.k, cfg.gw, cfg.E * cfg.C, cfg.dtype)
        base = tuning.default_split_launch_config(*key)
        tried = []
        for tile, warps in CANDIDATES:
            lc = dc.replace(base, conv_tile=tile, conv_warps=warps)
            with static.launch_row(tuning.SPLIT_LAUNCH_TABLE, key, lc):
                row = static.analyse(cfg, hw, workdir)
            k = row["kernels"][0]
            tried.append(dict(candidate=(tile, warps), conv_norm_us=k["model_overlap_us"],
                              regs=k["regs"], spill_st=k["spill_st"], spill_ld=k["spill_ld"],
                              ctas_per_sm=k["ctas_per_sm"], grid=k["grid"],
                              block_overlap_us=row["model_overlap_us"],
                              block_serial_us=row["model_serial_us"]))
            print(f"{cfg.name} {tile}/{warps}w: conv_norm {k['model_overlap_us']:.1f} us, "
                  f"regs {k['regs']}, spill {k['spill_st']} B, grid {k['grid']}", flush=True)
        results.append(dict(cfg=cfg.name, config=dc.asdict(cfg), tried=tried))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(environment=static.environment(), hardware=dc.asdict(hw),
                           command=shlex.join(["python", *sys.argv]), results=results),
                      fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
