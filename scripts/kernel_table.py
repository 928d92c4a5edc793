"""Print the README's kernel table (predicted vs floor vs XLA floor) from the committed reports.

Every number comes from files under docs/results/static-h100/:
  v1  before_kernel_v1.txt   (section C of the shared tool's text report: overlap / serial µs)
  v7  before_kernel_v7.json  (the previous kernels, same JSON schema as report.json)
  v8  report.json            (batch 128) and report_n1.json (batch 1)

    PYTHONPATH=. python scripts/kernel_table.py                          # print it
    PYTHONPATH=. python scripts/kernel_table.py --update-readme README.md  # rewrite it in place

The table is the README's (between ``<!-- kernel-table:start -->`` and ``<!-- kernel-table:end
-->``); this script is its only source, and tests/test_readme.py fails when the README's copy
differs from what the committed reports give.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re

from convfirst_jax.complexity.model_table import update_readme

KERNEL_TABLE_START = "<!-- kernel-table:start -->"
KERNEL_TABLE_END = "<!-- kernel-table:end -->"
RESULTS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "results" / "static-h100"
HEADER = (
    "| block (bf16, N=128) | v1 µs ovl / ser | v7 µs ovl / ser | plan | v8 µs ovl / ser "
    "| v8 whole waves µs | floor µs | % floor ovl / ser | XLA floor µs | v8 vs XLA floor "
    "| N=1: programs, waves, whole-wave µs | what limits it now |"
)


def v1_times(path: pathlib.Path) -> dict[str, tuple[float, float]]:
    """Overlap / serial µs per configuration from section C of the v1 text report."""
    out: dict[str, tuple[float, float]] = {}
    in_c = False
    for line in path.read_text().splitlines():
        if line.startswith("C. static throughput model"):
            in_c = True
            continue
        if in_c and re.match(r"^[A-Z]\. ", line):
            break
        m = re.match(r"^(C\d+ \d+x\d+ k\d gw\d+ [\w-]+(?: ls)?)\s+(.*)$", line) if in_c else None
        if m:
            # columns: L2MB, conv us (pipe), mlp us (pipe), rest, ovl, serial, ...
            nums = re.findall(r"(?<![\w(])(\d+(?:\.\d+)?)(?![\w)])", re.sub(r"\([^)]*\)", "", m.group(2)))
            out[m.group(1).strip()] = (float(nums[4]), float(nums[5]))
    return out


def limits(row: dict) -> str:
    """What bounds each phase (fused) or each kernel (split) of one configuration."""
    if row.get("plan") == "split":
        text = "; ".join(f"{kern['kernel']} {kern['model_overlap_us']:.0f} ({kern['bottleneck']})"
                         for kern in row["kernels"])
    else:
        text = "; ".join(
            f"{name} {max(row['phase_us'][name].values()):.0f} ({row['phase_bound'][name]})"
            for name in ("conv", "mlp"))
    if row.get("spill_st"):
        text += f"; spills {row['spill_st']} B"
    return text


def plan(row: dict) -> str:
    if row.get("plan") != "split":
        return "fused"
    return "split: " + " + ".join(row["kernel_names"])


def table() -> str:
    v1 = v1_times(RESULTS / "before_kernel_v1.txt")
    v7 = {r["cfg"]: r for r in json.loads((RESULTS / "before_kernel_v7.json").read_text())["rows"]}
    n1 = {r["cfg"]: r for r in json.loads((RESULTS / "report_n1.json").read_text())["rows"]}
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for r in json.loads((RESULTS / "report.json").read_text())["rows"]:
        cfg = r["cfg"]
        a, b = v1[cfg]
        old = v7[cfg]
        one = n1[cfg]
        lines.append(" | ".join([
            f"| {cfg}", f"{a:.0f} / {b:.0f}",
            f"{old['model_overlap_us']:.0f} / {old['model_serial_us']:.0f}", plan(r),
            f"{r['model_overlap_us']:.0f} / {r['model_serial_us']:.0f}",
            f"{r['model_waves_us']:.0f}", f"{r['floor_us']:.1f}",
            f"{100 * r['pct_floor_overlap']:.0f} / {100 * r['pct_floor_serial']:.0f}",
            f"{r['xla_floor_us']:.0f}", f"{r['vs_xla_floor']:.2f}x",
            f"{one['grid']}, {one['waves']:.2f}, {one['model_waves_us']:.1f}",
            limits(r) + " |"]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update-readme", metavar="README",
                    help=f"rewrite the table between {KERNEL_TABLE_START} and {KERNEL_TABLE_END}")
    args = ap.parse_args()
    if args.update_readme:
        try:
            changed = update_readme(args.update_readme, table(), KERNEL_TABLE_START,
                                    KERNEL_TABLE_END)
        except ValueError as e:
            raise SystemExit(f"kernel_table: {e}") from None
        print(f"{args.update_readme}: kernel table {'updated' if changed else 'unchanged'}")
    else:
        print(table())


if __name__ == "__main__":
    main()
