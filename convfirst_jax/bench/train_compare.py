"""CPU train steps, JAX vs PyTorch/timm, interleaved on the same machine (one command).

    python -m convfirst_jax.bench train-compare --models convfirst_atto convfirst_atto_gw8 \
        convnext_atto resnet18 --out results/train-compare

For every model and every round, times ``--steps`` steps of this project's training step
(``train.state.train_step``: forward, label-smoothed cross entropy, backward, global-norm
clipping, masked AdamW; batch 64, 64 px, random data, float32) and then, when torch and timm
import, the same work on timm's model (eager, channels_last, ``torch.set_num_threads``).
The two frameworks alternate within each round and the rounds repeat, so a busy machine slows
both alike; the report gives medians over rounds, the ratio JAX/PyTorch images/s, and the
1-minute load average (``os.getloadavg``) beside every sample. torch/timm are optional: without
them only the JAX column is filled. ConvFirst has no timm twin: its rows time a plain-PyTorch
model of the same architecture (``torch_compare.torch_convfirst``, named ``torch_<model>``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

from convfirst_jax import host_memory

DEFAULT_MODELS = ("convfirst_atto", "convfirst_atto_gw8", "convnext_atto", "resnet18")


#: JAX variants: "fast" = this project's CPU paths (shift-add depthwise, im2col convs,
#: written-out norm gradients, 2-d dense dots); "library" = every conv as
#: ``lax.conv_general_dilated``, the library max pool, autodiff of the norms and N-d dense
#: dots (the state before those paths).
JAX_VARIANTS = ("fast", "library")


def make_jax_train_step(model: str, *, batch_size: int, resolution: int, num_classes: int,
                        seed: int = 0, variant: str = "fast") -> Callable[[], float]:
    """A callable running one compiled ``train.state.train_step`` (the training package's step).

    ``variant`` (:data:`JAX_VARIANTS`) picks the conv paths the step is traced with.
    """
    if variant not in JAX_VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(JAX_VARIANTS)}")
    import contextlib
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from convfirst_jax.models.registry import create_model
    try:
        from train import state as state_lib  # the training package (repository checkout)
    except ImportError as e:
        raise RuntimeError("train-compare times train.state.train_step: run it from the "
                           f"repository root ({e})") from None

    net = create_model(model, num_classes=num_classes, rngs=nnx.Rngs(seed))
    schedule = state_lib.lr_schedule(1e-3, 10_000, 10)
    tx = state_lib.make_optimizer(schedule, weight_decay=0.05, grad_clip_norm=1.0)
    defs, st = state_lib.create_train_state(net, tx, use_ema=False)
    step = jax.jit(functools.partial(state_lib.train_step, graphdef=defs.train, tx=tx,
                                     schedule=schedule, label_smoothing=0.1),
                   donate_argnums=0)
    rng = np.random.default_rng(seed)
    batch = {"image": jnp.asarray(rng.standard_normal((batch_size, resolution, resolution, 3),
                                                      np.float32)),
             "label": jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32),
             "valid": jnp.ones((batch_size,), bool)}
    holder = {"state": st}
    from convfirst_jax.models import cpu_paths
    with contextlib.ExitStack() as scope:  # the conv paths are chosen at trace time
        if variant == "library":
            scope.enter_context(cpu_paths.conv_impl("conv"))
            scope.enter_context(cpu_paths.depthwise_impl("conv"))
        compiled = step.lower(st, batch).compile()

    def run() -> float:
        holder["state"], m = compiled(holder["state"], batch)
        return float(m["loss"])  # blocks until the step is done

    run.compiled = compiled  # the compiled step (its HLO names the profile's ops)
    return run


def time_steps(step: Callable[[], float], steps: int) -> tuple[float, float]:
    """(median, fastest) seconds per call of ``step`` over ``steps`` calls."""
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts)


def compare(models: Sequence[str], *, batch_size: int = 64, resolution: int = 64,
            num_classes: int = 10, rounds: int = 3, steps: int = 5, torch: bool = True,
            threads: int | None = None, variants: Sequence[str] = ("fast",),
            log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """One record per model: median images/s over rounds of each framework, ratio, loads.

    ``variants`` (:data:`JAX_VARIANTS`): the JAX steps to time; the first is the one compared
    with PyTorch (``jax_images_per_s``), the others are reported as ``jax_<variant>_images_per_s``.
    """
    from convfirst_jax.bench import torch_compare

    use_torch, why = torch_compare.torch_available(require_cuda=False) if torch else (False, "off")
    if torch and not use_torch:
        log(why)
    records = []
    for model in models:
        rec: dict[str, Any] = {"model": model, "batch_size": batch_size,
                               "resolution": resolution, "samples": []}
        t0 = time.perf_counter()
        jax_steps = {}
        for v in variants:
            jax_steps[v] = make_jax_train_step(model, batch_size=batch_size,
                                               resolution=resolution, num_classes=num_classes,
                                               variant=v)
            jax_steps[v]()  # first call
        rec["jax_compile_s"] = time.perf_counter() - t0
        jax_step = jax_steps[variants[0]]
        torch_step = None
        if use_torch:
            torch_step, info = torch_compare.make_torch_train_step(
                model, batch_size=batch_size, resolution=resolution, num_classes=num_classes,
                threads=threads)
            torch_step()
            rec.update(torch_model=info["timm_model"], torch_version=info["torch_version"],
                       torch_threads=info["torch_threads"])
        for r in range(rounds):
            sample = {"round": r, "load_before": os.getloadavg()[0]}
            sample["jax_s"], sample["jax_best_s"] = time_steps(jax_step, steps)
            for v in variants[1:]:
                sample[f"jax_{v}_s"], sample[f"jax_{v}_best_s"] = time_steps(jax_steps[v], steps)
            if torch_step is not None:
                sample["torch_s"], sample["torch_best_s"] = time_steps(torch_step, steps)
            sample["load_after"] = os.getloadavg()[0]
            rec["samples"].append(sample)
            parts = [f"jax {batch_size / sample['jax_s']:.0f}"]
            parts += [f"jax {v} {batch_size / sample[f'jax_{v}_s']:.0f}" for v in variants[1:]]
            if "torch_s" in sample:
                parts.append(f"torch {batch_size / sample['torch_s']:.0f}")
            log(f"[train-compare] {model} round {r}: {', '.join(parts)} img/s (load "
                f"{sample['load_before']:.1f}->{sample['load_after']:.1f})")
        jax_ips = statistics.median(batch_size / s["jax_s"] for s in rec["samples"])
        rec["jax_images_per_s"] = jax_ips
        rec["jax_variant"] = variants[0]
        for v in variants[1:]:
            rec[f"jax_{v}_images_per_s"] = statistics.median(
                batch_size / s[f"jax_{v}_s"] for s in rec["samples"])
        if torch_step is not None:
            torch_ips = statistics.median(batch_size / s["torch_s"] for s in rec["samples"])
            rec["torch_images_per_s"] = torch_ips
            # Ratio per round (same load), then the median.
            rec["jax_over_torch"] = statistics.median(
                s["torch_s"] / s["jax_s"] for s in rec["samples"])
            # Fastest step of each framework over all rounds: on a shared machine the
            # closest estimate of its speed when it had the cores to itself.
            rec["jax_best_images_per_s"] = max(batch_size / s["jax_best_s"]
                                               for s in rec["samples"])
            rec["torch_best_images_per_s"] = max(batch_size / s["torch_best_s"]
                                                 for s in rec["samples"])
            rec["jax_over_torch_best"] = (rec["jax_best_images_per_s"]
                                          / rec["torch_best_images_per_s"])
        rec["load_median"] = statistics.median(s["load_before"] for s in rec["samples"])
        records.append(rec)
    return records


def markdown(records: Sequence[dict[str, Any]], env: dict[str, Any]) -> str:
    """The comparison table."""
    lines = [f"# CPU train step: JAX vs PyTorch ({env['date']})", "",
             f"jax {env['jax']}, {env['cpu_count']} CPUs; batch "
             f"{records[0]['batch_size'] if records else '-'}, "
             f"{records[0]['resolution'] if records else '-'} px, AdamW, float32; medians "
             "over interleaved rounds; ratio = JAX img/s / PyTorch img/s per round (median).",
             "'JAX library convs' is the same step with every conv as "
             "lax.conv_general_dilated, the library max pool, autodiff norm gradients and "
             "N-d dense dots (before the CPU paths). 'best' = the fastest single step of each "
             "framework over all rounds and their ratio (on a shared, loaded machine the "
             "nearest to each one's speed with the cores to itself).",
             "Host memory (both frameworks, one process): "
             f"{env.get('host_memory', 'not recorded')}.",
             "", "| model | JAX img/s | JAX library convs img/s | PyTorch model | "
             "PyTorch img/s | JAX / PyTorch | JAX best | PyTorch best | best ratio | "
             "load (1 min) |", "|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for r in records:
        lines.append(f"| {r['model']} | {r['jax_images_per_s']:.0f} | "
                     f"{fmt(r.get('jax_library_images_per_s'), '.0f')} | "
                     f"{r.get('torch_model', '-')} | "
                     f"{fmt(r.get('torch_images_per_s'), '.0f')} | "
                     f"{fmt(r.get('jax_over_torch'), '.2f')} | "
                     f"{fmt(r.get('jax_best_images_per_s'), '.0f')} | "
                     f"{fmt(r.get('torch_best_images_per_s'), '.0f')} | "
                     f"{fmt(r.get('jax_over_torch_best'), '.2f')} | {r['load_median']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m convfirst_jax.bench train-compare``."""
    p = argparse.ArgumentParser(prog="python -m convfirst_jax.bench train-compare",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per round (median)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own)")
    p.add_argument("--no-torch", action="store_true", help="time only the JAX step")
    p.add_argument("--no-library", action="store_true",
                   help="skip the 'library convs' JAX step (the before-the-fix column)")
    a = p.parse_args(argv)
    for flag in ("batch_size", "resolution", "num_classes", "rounds", "steps"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(a, flag)}")
    import jax

    records = compare(a.models, batch_size=a.batch_size, resolution=a.resolution,
                      num_classes=a.num_classes, rounds=a.rounds, steps=a.steps,
                      torch=not a.no_torch, threads=a.threads,
                      variants=("fast",) if a.no_library else ("fast", "library"),
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    env = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "jax": jax.__version__,
           "cpu_count": os.cpu_count(), "backend": jax.default_backend(), "argv": argv,
           "host_memory": host_memory.status()}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "train_compare.json").write_text(json.dumps({"environment": env,
                                                          "records": records}, indent=2))
    md = markdown(records, env)
    (a.out / "train_compare.md").write_text(md)
    print(md)
    return 0
