"""Shared pieces of the latency lab: random inputs, records, environment."""

from __future__ import annotations

import argparse
import datetime
import platform as _platform
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from convfirst_jax import host_memory
from convfirst_jax.bench.ceilings import Ceilings, device_info
from convfirst_jax.bench.options import TimingOptions
from convfirst_jax.bench.timing import Timing, tree_nbytes
from convfirst_jax.complexity import roofline

CPU_PALLAS_NOTE = ("skipping impl pallas on {platform}: the Pallas kernel would run in interpret "
                   "mode, which is not a performance measurement")


def _bounded(text: str, cast: Callable[[str], Any], noun: str, minimum: float,
             rule: str) -> Any:
    try:
        v = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
    if v < minimum:
        raise argparse.ArgumentTypeError(f"{v} {rule}")
    return v


def positive_int(text: str) -> int:
    """argparse type of the lab's counts: an integer >= 1, else one clear error."""
    return _bounded(text, int, "an integer", 1, "is not positive (must be >= 1)")


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0, else one clear error."""
    return _bounded(text, int, "an integer", 0, "is negative (must be >= 0)")


def nonneg_float(text: str) -> float:
    """argparse type: a number >= 0, else one clear error."""
    return _bounded(text, float, "a number", 0, "is negative (must be >= 0)")


def on_gpu() -> bool:
    """True when the default backend is a GPU (the only place Pallas timings mean anything)."""
    return jax.default_backend() == "gpu"


def pallas_skip_note() -> str:
    return CPU_PALLAS_NOTE.format(platform=jax.default_backend())


def random_normal(rng: np.random.Generator, shape: Sequence[int], dtype: str,
                  scale: float = 1.0, shift: float = 0.0) -> jax.Array:
    """Random N(shift, scale^2) data on the device (never zeros: zeros can take fast paths).

    Drawn with numpy and transferred, so making inputs never compiles anything.
    """
    a = shift + scale * rng.standard_normal(tuple(shape), dtype=np.float32)
    return jnp.asarray(a.astype(jnp.dtype(dtype)))


def rotated_inputs(make: Callable[[np.random.Generator], tuple], seed: int | Sequence[int],
                   opts: TimingOptions) -> list[tuple]:
    """``make(rng)`` once to size one set, then enough independent sets to defeat caches."""
    rng = np.random.default_rng(seed)
    first = make(rng)
    n = opts.n_buffers(tree_nbytes(first))
    return [first] + [make(rng) for _ in range(n - 1)]


def environment(argv: Sequence[str]) -> dict[str, Any]:
    """Everything needed to interpret a results file later."""
    kind, plat = device_info()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "python": sys.version.split()[0],
        "device_kind": kind,
        "platform": plat,
        "device_count": jax.device_count(),
        "host": _platform.node(),
        "processor": _platform.processor() or _platform.machine(),
        "command_line": " ".join(["python", "-m", "convfirst_jax.bench", *argv]),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "host_memory": host_memory.status(),
    }


def make_record(*, suite: str, name: str, impl: str, mode: str, dtype: str, batch_size: int,
                resolution: int, kind: str, ceil: Ceilings, timing: Timing | None,
                flops: int, macs: int, nbytes: int, params: int, waterline_s: float,
                fused_floor_s: float | None = None, status: str = "ok", note: str = "",
                **extra: Any) -> dict[str, Any]:
    """One row of the results: the measurement plus the paper's derived quantities."""
    ideal = roofline.ideal_latency(flops, ceil.peak_flops)
    rec: dict[str, Any] = {
        "suite": suite, "name": name, "impl": impl, "mode": mode, "dtype": dtype,
        "batch_size": int(batch_size), "resolution": int(resolution), "kind": kind,
        "flops": int(flops), "macs": int(macs), "bytes": int(nbytes), "params": int(params),
        "ideal_s": ideal, "waterline_s": waterline_s, "fused_floor_s": fused_floor_s,
        "status": status, "note": note,
    }
    if timing is not None:
        rec.update(timing.summary())
        med = timing.median_s
        rec.update(
            efficiency=roofline.efficiency(flops, med, ceil.peak_flops) if flops else None,
            efficiency_gap_s=roofline.efficiency_gap(flops, med, ceil.peak_flops),
            latency_over_waterline=med / waterline_s if waterline_s else None,
            latency_over_fused_floor=(med / fused_floor_s) if fused_floor_s else None,
            images_per_s=batch_size / med,
        )
    rec.update(extra)
    return rec


def skipped_record(*, suite: str, name: str, impl: str, mode: str, dtype: str,
                   batch_size: int | None, note: str, **extra: Any) -> dict[str, Any]:
    """A measurement that was not taken, and why (kept in the results, never silently lost)."""
    extra.setdefault("kind", {"blocks": "block", "models": "model"}.get(suite, ""))
    return {"suite": suite, "name": name, "impl": impl, "mode": mode, "dtype": dtype,
            "batch_size": batch_size, "status": "skipped", "note": note, **extra}


def max_abs_diff(a: jax.Array, b: jax.Array) -> float:
    """max |a - b| in float32 (numerical cross-check between implementations)."""
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
