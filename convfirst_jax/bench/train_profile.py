"""Where a CPU train step's time goes: each compiled op's profiled time, by source op and phase.

    python -m convfirst_jax.bench train-profile --models convnext_atto \
        --out docs/results/cpu-imagenette-64px/train_profile

Compiles the same step as ``train-compare`` (``train.state.train_step``, batch 64, 64 px,
random data, AdamW), runs it under ``jax.profiler.trace`` and reads back the trace: one
event per executed XLA op (fusion, dot, YNNPACK fusion, ...) on the CPU's worker threads.
Each op is named after its instruction in the optimised HLO, whose metadata carries the JAX
operation it came from (``op_name``); the report sums the op time per (op kind, phase, JAX
operation), where the phase is "backward" for operations under autodiff's transpose,
"forward" for the rest of the differentiated function and "update" for the optimiser, loss
and metrics ("?" for ops XLA created without metadata). It also gives the step's wall time
without the profiler, the profiled span, the op time summed over threads and their ratio
(how many of the cores were busy on average), and a matmul rate before and after (how fast
the shared machine was).

Limits: the attribution reads the CPU runtime's op events (XLA:CPU thunks); on a GPU the
trace's device events are kernels, most of which do not carry an HLO name, so use the
profiler's own viewer there. Times under the profiler are a little longer than without it.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import pathlib
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

#: Trace events that are the runtime's own bookkeeping, not an XLA op.
_RUNTIME_EVENT = re.compile(r"^\$|ThunkExecutor|np\.asarray|Pjit|Slinky|Await|Execute|"
                            r"variablelib|^end: |Threadpool|Handle inputs|PythonRef|"
                            r"ParseArguments|AllocateOutput|CommonPjRt")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = (\S+) .*?op_name=\"([^\"]*)\"")


def hlo_op_metadata(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (result shape, JAX ``op_name``) of the entry-level instructions.

    Reads the instructions of every computation (the lines indented under a ``%name (...) {``
    header); fused computations' inner instructions are named differently from the executed
    fusion, so only the executed names match profile events.
    """
    meta: dict[str, tuple[str, str]] = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            meta.setdefault(m.group(1), (m.group(2), m.group(3)))
    return meta


def phase_and_source(op_name: str) -> tuple[str, str]:
    """("forward" | "backward" | "update", the JAX operation) of an HLO ``op_name``; ("?", "?")
    for an op without one.

    ``jit(train_step)/transpose(jvp(ric,rjc->cij))/dot_general`` -> ("backward",
    "ric,rjc->cij dot_general"); ``jit(train_step)/jvp()/mul`` -> ("forward", "mul");
    ``jit(train_step)/add`` -> ("update", "add").
    """
    if not op_name:  # an op XLA made without metadata (e.g. a rewritten convolution)
        return "?", "?"
    path = op_name.split("/")
    if path and path[0].startswith("jit("):
        path = path[1:]
    phase = ("backward" if any(p.startswith("transpose(") for p in path)
             else "forward" if any(p.startswith("jvp(") for p in path) else "update")
    parts = []
    for p in path:
        inner = re.sub(r"^(?:(?:transpose|jvp|jit)\()+|\)+$", "", p)
        if inner and inner not in ("jvp", "transpose"):
            parts.append(inner)
    return phase, " ".join(parts) or "?"


def op_events(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The complete ("X") events of a trace that are XLA ops, not runtime bookkeeping."""
    return [e for e in trace.get("traceEvents", [])
            if e.get("ph") == "X" and e.get("dur", 0) > 0
            and not _RUNTIME_EVENT.search(e.get("name", ""))]


def busy_union_us(events: Iterable[dict[str, Any]]) -> float:
    """Microseconds during which at least one op ran (the union of the events' intervals)."""
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events)
    total, start, end = 0.0, None, None
    for a, b in spans:
        if end is None or a > end:
            if end is not None:
                total += end - start
            start, end = a, b
        else:
            end = max(end, b)
    return total + (end - start if end is not None else 0.0)


def attribute(events: Sequence[dict[str, Any]], meta: dict[str, tuple[str, str]],
              steps: int) -> list[dict[str, Any]]:
    """Rows (kind, phase, source, shape, count, ms per step), largest first.

    ``kind`` is the executed op's name without its ``.N`` suffix (``transpose_copy_fusion``,
    ``ynn_fusion``, ``dot``, ...); ``shape`` the result shape of its longest instance.
    Times are summed over threads, so two threads working on one op count twice.
    """
    agg: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in events:
        shape, op_name = meta.get(e["name"], ("?", ""))
        phase, source = phase_and_source(op_name)
        key = (re.sub(r"\.\d+$", "", e["name"]), phase, source)
        row = agg.setdefault(key, {"kind": key[0], "phase": phase, "source": source,
                                   "names": set(), "us": 0.0, "longest": (0.0, shape)})
        row["names"].add(e["name"])
        row["us"] += e["dur"]
        if e["dur"] > row["longest"][0]:
            row["longest"] = (e["dur"], shape)
    total = sum(r["us"] for r in agg.values()) or 1.0
    rows = [{"kind": r["kind"], "phase": r["phase"], "source": r["source"],
             "shape": r["longest"][1], "ops": len(r["names"]),
             "ms_per_step": r["us"] / steps / 1e3, "share": r["us"] / total}
            for r in agg.values()]
    return sorted(rows, key=lambda r: -r["ms_per_step"])


def read_trace(trace_dir: str) -> dict[str, Any]:
    """The perfetto trace JSON that ``jax.profiler.trace(create_perfetto_trace=True)`` wrote."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise RuntimeError(f"no *.trace.json.gz under {trace_dir}: the profiler wrote no trace")
    with gzip.open(max(files, key=os.path.getmtime)) as f:
        return json.load(f)


def machine_matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Median f32 rate of an n x n matmul in GFLOP/s: how fast the (shared) machine is now."""
    import jax.numpy as jnp
    import numpy as np

    from convfirst_jax.bench.timing import time_jax

    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n), np.float32))
    b = jnp.asarray(rng.standard_normal((n, n), np.float32))
    t = time_jax(lambda a, b: a @ b, [(a, b), (b, a)], warmup=2, repeats=repeats)
    return 2.0 * n ** 3 / t.median_s / 1e9


def profile_model(model: str, *, batch_size: int, resolution: int, num_classes: int,
                  steps: int, warmup: int = 3) -> dict[str, Any]:
    """Profile ``steps`` train steps of ``model``: wall time, busy threads and the op table."""
    import jax

    from convfirst_jax.bench.train_compare import make_jax_train_step, time_steps

    machine_before = machine_matmul_gflops()
    run = make_jax_train_step(model, batch_size=batch_size, resolution=resolution,
                              num_classes=num_classes)
    for _ in range(warmup):
        run()
    wall_s, _ = time_steps(run, steps)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(steps):
                run()
        events = op_events(read_trace(d))
    machine_after = machine_matmul_gflops()
    if not events:
        raise RuntimeError("the trace has no XLA op events (is this the CPU backend?)")
    meta = hlo_op_metadata(run.compiled.as_text())
    span = max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)
    op_us = sum(e["dur"] for e in events)
    rows = attribute(events, meta, steps)
    phases = collections.Counter()
    for r in rows:
        phases[r["phase"]] += r["ms_per_step"]
    return {"model": model, "batch_size": batch_size, "resolution": resolution,
            "steps": steps, "wall_ms_per_step": wall_s * 1e3,
            "profiled_span_ms_per_step": span / steps / 1e3,
            "busy_ms_per_step": busy_union_us(events) / steps / 1e3,
            "op_ms_per_step": op_us / steps / 1e3,
            "threads": len({(e.get("pid"), e.get("tid")) for e in events}),
            "machine_matmul_gflops": [machine_before, machine_after],
            "phase_ms_per_step": dict(phases), "rows": rows}


def markdown(profile: dict[str, Any], env: dict[str, Any], top: int = 30) -> str:
    """One model's profile as a page: header numbers, time by phase, the top op rows."""
    p = profile
    busy = p["op_ms_per_step"] / max(p["profiled_span_ms_per_step"], 1e-9)
    lines = [f"# Where {p['model']}'s CPU train step goes ({env['date']})", "",
             f"jax {env['jax_version']}, {env['cpu_count']} CPUs ({env['processor']}), "
             f"device {env['device_kind']}; batch "
             f"{p['batch_size']}, {p['resolution']} px, AdamW, float32; {p['steps']} steps.",
             f"Command: `{env['command_line']}`", "",
             "- machine check, median f32 1024x1024 matmul before / after: "
             + " / ".join(f"{g:.0f}" for g in p["machine_matmul_gflops"]) + " GFLOP/s (on a "
             "shared host it drops when the other tenants are busy)",
             f"- wall time per step (no profiler, median): {p['wall_ms_per_step']:.0f} ms "
             f"({p['batch_size'] / p['wall_ms_per_step'] * 1e3:.0f} images/s)",
             f"- profiled span per step: {p['profiled_span_ms_per_step']:.0f} ms; some op "
             f"running: {p['busy_ms_per_step']:.0f} ms",
             f"- op time summed over {p['threads']} threads: {p['op_ms_per_step']:.0f} ms "
             f"per step, so on average {busy:.2f} threads were busy",
             "- by phase (op time): " + ", ".join(
                 f"{k} {v:.0f} ms" for k, v in sorted(p["phase_ms_per_step"].items(),
                                                      key=lambda kv: -kv[1])), "",
             "Op time per (op kind, phase, JAX operation), summed over threads; 'ops' is the "
             "number of distinct compiled ops in the row, 'shape' the result of the longest "
             "one.", "",
             "| # | op kind | phase | JAX operation | shape | ops | ms / step | share |",
             "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(p["rows"][:top], 1):
        shape = r["shape"].split("{")[0]
        lines.append(f"| {i} | {r['kind']} | {r['phase']} | {r['source'][:60]} | {shape} | "
                     f"{r['ops']} | {r['ms_per_step']:.1f} | {100 * r['share']:.1f} % |")
    rest = p["rows"][top:]
    if rest:
        lines.append(f"| | {len(rest)} more rows | | | | {sum(r['ops'] for r in rest)} | "
                     f"{sum(r['ms_per_step'] for r in rest):.1f} | "
                     f"{100 * sum(r['share'] for r in rest):.1f} % |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m convfirst_jax.bench train-profile``."""
    from convfirst_jax.bench.common import environment, positive_int
    from convfirst_jax.specs import list_models

    p = argparse.ArgumentParser(prog="python -m convfirst_jax.bench train-profile",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["convnext_atto"], choices=list_models(),
                   metavar="MODEL", help="registry names (default convnext_atto)")
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--resolution", type=positive_int, default=64)
    p.add_argument("--num-classes", type=positive_int, default=10)
    p.add_argument("--steps", type=positive_int, default=4, help="profiled (and timed) steps")
    p.add_argument("--top", type=positive_int, default=30, help="rows in the markdown table")
    argv = list(sys.argv[1:] if argv is None else argv)
    a = p.parse_args(argv)
    if a.resolution < 32:
        p.error(f"--resolution {a.resolution}: the models downsample 32x; use at least 32")
    env = {**environment(["train-profile", *argv]), "cpu_count": os.cpu_count()}
    a.out.mkdir(parents=True, exist_ok=True)
    for model in a.models:
        print(f"profiling {model} ...", file=sys.stderr, flush=True)
        prof = profile_model(model, batch_size=a.batch_size, resolution=a.resolution,
                             num_classes=a.num_classes, steps=a.steps)
        (a.out / f"train_profile_{model}.json").write_text(
            json.dumps({"environment": env, "profile": prof}, indent=2))
        md = markdown(prof, env, top=a.top)
        (a.out / f"train_profile_{model}.md").write_text(md)
        print(md)
    return 0
