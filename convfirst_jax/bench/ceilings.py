"""Device ceilings: peak arithmetic rate (FLOP/s) and memory bandwidth (bytes/s).

Lavin 2024 (Sec. 2) measures efficiency against the device's peak rate and memory bandwidth.
We measure both once per run, in the benchmark dtype:

* peak FLOP/s: a large square matmul (2 n^3 flops), best-decile latency;
* bandwidth: the better of a large elementwise scale ``x * s`` (reads and writes the array
  once each) and a large sum (reads it once); the read-only figure guards against hosts where
  writing a fresh output buffer costs page faults (CPU).

A table of datasheet figures serves as reference and as fallback (``--ceilings datasheet``).
Datasheet numbers are dense (no 2:4 sparsity). For float32, JAX's default matmul precision
lets XLA use TF32 tensor cores on Ampere/Hopper, so the float32 peak is the TF32 figure unless
``jax_default_matmul_precision`` is "highest"/"float32".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from convfirst_jax.bench.timing import time_jax
from convfirst_jax.dtypes import DTYPE_NAMES

T = 1e12


@dataclasses.dataclass(frozen=True)
class DatasheetEntry:
    """Vendor figures for one accelerator (dense FLOP/s, HBM bytes/s, L2 bytes)."""

    name: str
    bf16_flops: float  # also fp16
    tf32_flops: float
    fp32_flops: float
    hbm_bytes_per_s: float
    l2_bytes: int


# NVIDIA datasheets (H100: "NVIDIA H100 Tensor Core GPU" datasheet; H200: "NVIDIA H200 Tensor
# Core GPU" product brief; A100: "NVIDIA A100 Tensor Core GPU" datasheet). Dense rates.
DATASHEET: dict[str, DatasheetEntry] = {
    "H200": DatasheetEntry("NVIDIA H200 SXM", 989.4 * T, 494.7 * T, 66.9 * T, 4.8e12, 50 << 20),
    "H100 NVL": DatasheetEntry("NVIDIA H100 NVL", 835.0 * T, 417.5 * T, 60.0 * T, 3.9e12,
                               50 << 20),
    "H100 PCIE": DatasheetEntry("NVIDIA H100 PCIe", 756.5 * T, 378.0 * T, 51.2 * T, 2.0e12,
                                50 << 20),
    "H100": DatasheetEntry("NVIDIA H100 SXM", 989.4 * T, 494.7 * T, 66.9 * T, 3.35e12, 50 << 20),
    "A100 80GB PCIE": DatasheetEntry("NVIDIA A100 80GB PCIe", 312 * T, 156 * T, 19.5 * T,
                                     1.935e12, 40 << 20),
    "A100-PCIE": DatasheetEntry("NVIDIA A100 40GB PCIe", 312 * T, 156 * T, 19.5 * T, 1.555e12,
                                40 << 20),
    "A100-SXM4-80GB": DatasheetEntry("NVIDIA A100 SXM 80GB", 312 * T, 156 * T, 19.5 * T,
                                     2.039e12, 40 << 20),
    "A100": DatasheetEntry("NVIDIA A100 SXM 40GB", 312 * T, 156 * T, 19.5 * T, 1.555e12,
                           40 << 20),
}

CPU_CACHE_BYTES = 32 << 20


def lookup_datasheet(device_kind: str) -> DatasheetEntry | None:
    """The datasheet entry whose key occurs in ``device_kind`` (most specific first)."""
    kind = device_kind.upper()
    for key, entry in DATASHEET.items():  # ordered most specific first
        if key in kind:
            return entry
    return None


def f32_uses_tf32() -> bool:
    """Whether float32 matmuls may run on TF32 tensor cores under the current JAX config."""
    prec = jax.config.jax_default_matmul_precision
    return str(prec).lower() not in ("highest", "float32", "precision.highest")


def datasheet_peak(entry: DatasheetEntry, dtype: str) -> float:
    """Peak FLOP/s of ``entry`` for matmuls in ``dtype``."""
    if dtype in ("bfloat16", "float16"):
        return entry.bf16_flops
    if dtype == "float32":
        return entry.tf32_flops if f32_uses_tf32() else entry.fp32_flops
    raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPE_NAMES)}")


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """Peak rate and bandwidth used for the ideal line and the waterline.

    Attributes:
      device_kind: ``jax.devices()[0].device_kind`` (e.g. "NVIDIA H100 80GB HBM3", "cpu").
      platform: "gpu", "cpu", "tpu".
      dtype: the dtype the peak applies to.
      peak_flops: FLOP/s.
      bandwidth: bytes/s.
      source: "measured" or "datasheet".
      details: how they were obtained (sizes, datasheet reference values, notes).
    """

    device_kind: str
    platform: str
    dtype: str
    peak_flops: float
    bandwidth: float
    source: str
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ridge_intensity(self) -> float:
        """FLOP/byte above which a kernel is compute-bound (roofline ridge point)."""
        return self.peak_flops / self.bandwidth

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ridge_intensity"] = self.ridge_intensity
        return d


def device_info() -> tuple[str, str]:
    """(device_kind, platform) of the default device."""
    dev = jax.devices()[0]
    return str(dev.device_kind), str(dev.platform)


def cache_bytes(device_kind: str | None = None) -> int:
    """Last-level cache size used to decide how many input buffers to rotate."""
    kind, platform = device_info() if device_kind is None else (device_kind, "")
    entry = lookup_datasheet(kind)
    if entry is not None:
        return entry.l2_bytes
    return CPU_CACHE_BYTES if (platform == "cpu" or kind == "cpu") else 64 << 20


def datasheet_ceilings(dtype: str, device_kind: str | None = None) -> Ceilings | None:
    """Datasheet ceilings for the current (or named) device, None when it is not in the table."""
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPE_NAMES)}")
    kind, platform = device_info()
    kind = device_kind or kind
    entry = lookup_datasheet(kind)
    if entry is None:
        return None
    return Ceilings(kind, platform, dtype, datasheet_peak(entry, dtype), entry.hbm_bytes_per_s,
                    "datasheet", {"datasheet": entry.name, "f32_tf32": f32_uses_tf32()})


def measure_ceilings(dtype: str, *, matmul_n: int | None = None, copy_bytes: int | None = None,
                     repeats: int = 10, seed: int = 0) -> Ceilings:
    """Measure peak FLOP/s (large matmul in ``dtype``) and bandwidth (large scale-copy).

    Sizes default to 8192^2 matmul / 1 GiB copy on accelerators, 1024^2 / 64 MiB on CPU.
    The best-decile (p10) latency is used: a ceiling is what the device can reach.
    ``details`` keeps the copy and read-only bandwidths separately.
    """
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPE_NAMES)}")
    kind, platform = device_info()
    accel = platform != "cpu"
    n = matmul_n or (8192 if accel else 1024)
    nbytes = copy_bytes or ((1 << 30) if accel else (64 << 20))
    jdt = jnp.dtype(dtype)
    rng = np.random.default_rng(seed)  # numpy draws: making the operands compiles nothing
    a = jnp.asarray(rng.standard_normal((n, n), np.float32).astype(jdt))
    b = jnp.asarray(rng.standard_normal((n, n), np.float32).astype(jdt))
    mm = time_jax(lambda a, b: a @ b, [(a, b), (b, a)], warmup=2, repeats=repeats)
    peak = 2.0 * n ** 3 / mm.p10_s
    elems = nbytes // jdt.itemsize
    x = jnp.asarray(rng.random(elems, np.float32).astype(jdt))
    s = jnp.asarray(np.asarray(1.0001, jdt))  # an argument, so XLA cannot fold the multiply away
    cp = time_jax(lambda x, s: x * s, [(x, s)], warmup=2, repeats=repeats)
    rd = time_jax(lambda x: jnp.sum(x, dtype=jnp.float32), [(x,)], warmup=2, repeats=repeats)
    copy_bw = 2.0 * elems * jdt.itemsize / cp.p10_s
    read_bw = 1.0 * elems * jdt.itemsize / rd.p10_s
    bandwidth = max(copy_bw, read_bw)
    details: dict[str, Any] = {
        "matmul_n": n, "matmul_p10_s": mm.p10_s, "matmul_median_s": mm.median_s,
        "copy_bytes": int(elems * jdt.itemsize), "copy_p10_s": cp.p10_s,
        "copy_median_s": cp.median_s, "copy_bytes_per_s": copy_bw, "read_p10_s": rd.p10_s,
        "read_bytes_per_s": read_bw, "f32_tf32": f32_uses_tf32(),
    }
    ref = datasheet_ceilings(dtype, kind)
    if ref is not None:
        details.update(datasheet=ref.details["datasheet"], datasheet_peak_flops=ref.peak_flops,
                       datasheet_bandwidth=ref.bandwidth)
    return Ceilings(kind, platform, dtype, peak, bandwidth, "measured", details)


def get_ceilings(dtype: str, mode: str = "measured", **measure_kw: Any) -> tuple[Ceilings, str]:
    """Ceilings by ``mode`` ("measured" | "datasheet"); returns (ceilings, note).

    "datasheet" on a device missing from the table falls back to measuring, and says so.
    """
    if mode == "measured":
        return measure_ceilings(dtype, **measure_kw), ""
    if mode == "datasheet":
        ds = datasheet_ceilings(dtype)
        if ds is not None:
            return ds, ""
        kind, _ = device_info()
        note = (f"no datasheet entry for device {kind!r} (known: "
                f"{', '.join(e.name for e in DATASHEET.values())}); measured the ceilings instead")
        return measure_ceilings(dtype, **measure_kw), note
    raise ValueError(f"unknown ceilings mode {mode!r}; valid: measured, datasheet")
