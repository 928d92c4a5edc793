"""A/B of the CPU train step with and without :func:`convfirst_jax.host_memory.reuse_host_memory`.

    python scripts/ab_host_memory.py --models convfirst_atto convnext_atto convfirst_atto_gw8 \
        resnet18 --frameworks jax torch --pairs 3 \
        --out docs/results/cpu-imagenette-64px/ab_host_memory.md

The allocator is set per process before JAX starts, so the two arms cannot share a process:
each pair runs one process of each ("off" = glibc's default malloc, "on" = the reused heap),
the order alternating between pairs. A process compiles ``train.state.train_step`` (batch 64,
64 px, AdamW, random data, as ``python -m convfirst_jax.bench train-compare``), runs
``--warmup`` steps (3) and times ``--steps`` more (median), counting the minor page faults
of those steps; ``--frameworks torch`` also times PyTorch's step of that command the same way (the setting
is process-wide, so in ``train-compare`` both frameworks run with it). The per-pair ratio
off / on is the speed-up.

``--vs-torch`` compares the frameworks instead, both with the setting: each pair runs one
JAX and one PyTorch process (order alternating), and the per-pair ratio is JAX / PyTorch
images/s, the measure of ``train-compare`` without sharing a process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def child(model: str, mode: str, framework: str, steps: int, warmup: int) -> None:
    """One process: set the allocator (mode "on"), time the step, print one JSON line."""
    sys.path.insert(0, str(REPO))
    from convfirst_jax import host_memory
    status = host_memory.reuse_host_memory() if mode == "on" else host_memory.status()
    import resource

    from convfirst_jax.bench.train_compare import time_steps

    if framework == "torch":  # PyTorch's step of train-compare (2 threads)
        from convfirst_jax.bench.torch_compare import make_torch_train_step
        run, _ = make_torch_train_step(model, batch_size=64, resolution=64, num_classes=10,
                                       threads=2)
        temp = None
    else:
        from convfirst_jax.bench.train_compare import make_jax_train_step
        run = make_jax_train_step(model, batch_size=64, resolution=64, num_classes=10)
        temp = run.compiled.memory_analysis().temp_size_in_bytes
    for _ in range(warmup):
        run()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    median_s, _ = time_steps(run, steps)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / steps
    print(json.dumps({"model": model, "framework": framework, "mode": mode,
                      "status": status, "temp_bytes": temp,
                      "ms": 1e3 * median_s, "faults_per_step": faults}))


def run_child(model: str, mode: str, framework: str, args: argparse.Namespace,
              env: dict[str, str]) -> dict:
    """One fresh process of :func:`child`; its JSON record."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", model, mode, framework, "--steps",
         str(args.steps), "--warmup", str(args.warmup), "--out", os.devnull],
        capture_output=True, text=True, env=env, cwd=REPO, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def ab_pairs(model: str, framework: str, args: argparse.Namespace, env: dict[str, str],
             lines: list[str]) -> list[dict]:
    """``args.pairs`` pairs of processes for one model and framework; appends its table row."""
    runs: dict[str, list[dict]] = {"off": [], "on": []}
    for p in range(args.pairs):
        for mode in (("off", "on") if p % 2 == 0 else ("on", "off")):
            rec = run_child(model, mode, framework, args, env)
            runs[mode].append(rec)
            print(f"[ab_host_memory] {model} {framework} pair {p} {mode}: {rec['ms']:.0f} ms, "
                  f"{rec['faults_per_step']:.0f} faults / step ({rec['status']})", flush=True)
    ratios = [a["ms"] / b["ms"] for a, b in zip(runs["off"], runs["on"])]
    med = {m: statistics.median(r["ms"] for r in runs[m]) for m in runs}
    flt = {m: statistics.median(r["faults_per_step"] for r in runs[m]) for m in runs}
    temp = runs["on"][0]["temp_bytes"]
    lines.append(f"| {model} | {framework} | {'-' if temp is None else f'{temp / 1e6:.0f}'} | "
                 f"{med['off']:.0f} | {med['on']:.0f} | {statistics.median(ratios):.2f}x | "
                 f"{', '.join(f'{r:.2f}' for r in ratios)} | {flt['off']:.0f} | "
                 f"{flt['on']:.0f} |")
    return runs["off"] + runs["on"]


def vs_torch(args: argparse.Namespace, env: dict[str, str], head: list[str]) -> int:
    """JAX vs PyTorch, one process each per pair, both with the setting; writes ``--out``."""
    lines = [head[0].replace("A/B: XLA:CPU buffers from one reused heap vs glibc's default "
                             "malloc", "JAX vs PyTorch train step in separate processes, both "
                             "with the reused heap"), *head[1:],
             "| model | JAX ms / step | PyTorch ms / step | JAX / PyTorch images/s (median "
             "of pairs) | per-pair ratios |", "|---|---|---|---|---|"]
    records = []
    for model in args.models:
        ms: dict[str, list[float]] = {"jax": [], "torch": []}
        for p in range(args.pairs):
            for framework in (("jax", "torch") if p % 2 == 0 else ("torch", "jax")):
                rec = run_child(model, "on", framework, args, env)
                records.append(rec)
                ms[framework].append(rec["ms"])
                print(f"[vs-torch] {model} pair {p} {framework}: {rec['ms']:.0f} ms, "
                      f"{rec['faults_per_step']:.0f} faults / step", flush=True)
        ratios = [t / j for j, t in zip(ms["jax"], ms["torch"])]
        lines.append(f"| {model} | {statistics.median(ms['jax']):.0f} | "
                     f"{statistics.median(ms['torch']):.0f} | {statistics.median(ratios):.2f} | "
                     f"{', '.join(f'{r:.2f}' for r in ratios)} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    print("\n".join(lines))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["convfirst_atto"])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per process")
    ap.add_argument("--vs-torch", action="store_true",
                    help="JAX vs PyTorch in separate processes, both with the setting")
    ap.add_argument("--frameworks", nargs="+", default=["jax"], choices=["jax", "torch"],
                    help="torch: PyTorch's train-compare step too (needs torch and timm)")
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "MODE", "FRAMEWORK"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.steps, args.warmup)
        return 0
    import jax  # only for the version in the header (this process runs no step)

    env = {k: v for k, v in os.environ.items() if k != "CONVFIRST_HOST_MALLOC"}
    lines = [f"# A/B: XLA:CPU buffers from one reused heap vs glibc's default malloc "
             f"({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC)", "",
             f"jax {jax.__version__}, {os.cpu_count()} CPUs, batch 64, 64 px, float32, AdamW; "
             f"{args.pairs} pairs of processes (order alternating), median of {args.steps} "
             f"steps each after {args.warmup} warm-up steps.",
             f"Command: `python scripts/ab_host_memory.py {' '.join(sys.argv[1:])}`", "",
             "| model | framework | temp MB | off ms / step | on ms / step | speed-up (median "
             "of pairs) | per-pair speed-ups | off faults / step | on faults / step |",
             "|---|---|---|---|---|---|---|---|---|"]
    if args.vs_torch:
        return vs_torch(args, env, lines[:5])
    records = []
    for model in args.models:
        for framework in args.frameworks:
            records += ab_pairs(model, framework, args, env, lines)
    on_status = next((r["status"] for r in records if r["mode"] == "on"), "-")
    lines += ["", f"'on' status: {on_status}. A page is 4 KiB: "
              "for JAX, 'off' faults x 4096 is about the temp block, page-faulted afresh every "
              "step."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
