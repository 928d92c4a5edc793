"""Efficiency, efficiency gap and waterline (Lavin 2024, Sec. 2).

Notation: ``ops`` are floating-point operations (2 per multiply-accumulate plus the
elementwise operations counted by ``convfirst_jax.complexity``), ``peak`` is the device's peak
rate in FLOP/s and ``bandwidth`` its memory bandwidth in bytes/s (see ``ceilings``).

* Computational efficiency = (ops / latency) / peak                       [Sec. 2]
* Ideal latency = ops / peak; efficiency gap = latency - ops / peak       [efficiency gap plots]
* Kernel floor = max(ops / peak, bytes / bandwidth)  (the roofline bound of one kernel)
* Waterline of an unfused kernel sequence = sum of the kernel floors       [waterline analysis]
* Fused block floor = max(sum ops / peak, (x + weights + out bytes) / bandwidth): a fused
  conv-first block keeps its intermediate (E*C-wide) activations on chip, so device memory
  sees only the input, the weights and the output.

Every function takes plain numbers or objects with the ``LayerCost`` fields (``flops``,
``act_bytes_read``, ``act_bytes_written``, ``weight_bytes``), so the math is testable by hand.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Protocol, Sequence


class CostLike(Protocol):
    flops: int
    act_bytes_read: int
    act_bytes_written: int
    weight_bytes: int


@dataclasses.dataclass(frozen=True)
class OpCost:
    """Minimal stand-in for ``complexity.LayerCost`` (same field names) for one kernel."""

    name: str
    kind: str
    flops: int
    act_bytes_read: int
    act_bytes_written: int
    weight_bytes: int = 0
    macs: int = 0
    params: int = 0
    block: str | None = None
    in_shape: tuple[int, ...] = ()
    out_shape: tuple[int, ...] = ()
    kernel_size: int = 1
    stride: int = 1
    groups: int = 1

    @property
    def bytes_total(self) -> int:
        return self.act_bytes_read + self.act_bytes_written + self.weight_bytes

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes_total if self.bytes_total else float("inf")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def layer_bytes(layer: CostLike) -> int:
    """Bytes one unfused kernel moves: activations read + written + weights."""
    return int(layer.act_bytes_read + layer.act_bytes_written + layer.weight_bytes)


def ideal_latency(ops: float, peak: float) -> float:
    """ops / peak: the latency at 100 % computational efficiency (Lavin 2024, Sec. 2)."""
    _positive("peak", peak)
    return ops / peak


def efficiency(ops: float, latency_s: float, peak: float) -> float:
    """Computational efficiency = (ops / latency) / peak (Lavin 2024, Sec. 2)."""
    _positive("latency_s", latency_s)
    _positive("peak", peak)
    return ops / latency_s / peak


def efficiency_gap(ops: float, latency_s: float, peak: float) -> float:
    """Efficiency gap = latency - ops / peak, in seconds (Lavin 2024, efficiency gap plots)."""
    return latency_s - ideal_latency(ops, peak)


def kernel_floor(flops: float, nbytes: float, peak: float, bandwidth: float) -> float:
    """Roofline floor of one kernel: max(flops / peak, bytes / bandwidth) seconds."""
    _positive("peak", peak)
    _positive("bandwidth", bandwidth)
    return max(flops / peak, nbytes / bandwidth)


def waterline_per_layer(layers: Iterable[CostLike], peak: float,
                        bandwidth: float) -> list[float]:
    """Floor of every kernel of an unfused sequence (Lavin 2024, waterline analysis)."""
    return [kernel_floor(l.flops, layer_bytes(l), peak, bandwidth) for l in layers]


def waterline(layers: Iterable[CostLike], peak: float, bandwidth: float) -> float:
    """Waterline of an unfused kernel sequence: sum of max(ops/peak, bytes/bandwidth)."""
    return float(sum(waterline_per_layer(layers, peak, bandwidth)))


def fused_floor(flops: float, x_bytes: float, weight_bytes: float, out_bytes: float,
                peak: float, bandwidth: float) -> float:
    """Floor of a fused block: max(flops / peak, (x + weights + out) / bandwidth)."""
    return kernel_floor(flops, x_bytes + weight_bytes + out_bytes, peak, bandwidth)


def fused_block_floor(block_layers: Sequence[CostLike], peak: float, bandwidth: float) -> float:
    """Fused floor of one residual block given its unfused layer sequence.

    x bytes = what the first kernel (the k x k conv) reads, out bytes = what the last kernel
    (the residual add) writes, weights = all weights of the block; the flops are the sum.
    """
    if not block_layers:
        raise ValueError("block_layers is empty; pass the unfused layers of one block")
    flops = sum(l.flops for l in block_layers)
    weights = sum(l.weight_bytes for l in block_layers)
    return fused_floor(flops, block_layers[0].act_bytes_read, weights,
                       block_layers[-1].act_bytes_written, peak, bandwidth)


def bound(flops: float, nbytes: float, peak: float, bandwidth: float) -> str:
    """"compute" or "memory": which term of the kernel floor is larger."""
    return "compute" if flops / peak >= nbytes / bandwidth else "memory"
