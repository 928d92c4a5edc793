"""Efficiency, efficiency gap, waterline and the fused-block floor (Lavin 2024, Sec. 2).

Notation: ``ops`` are floating-point operations (2 per multiply-accumulate plus the
element-wise operations of :mod:`convfirst_jax.complexity.costs`), ``peak`` is the device's
peak rate in FLOP/s and ``bandwidth`` its memory bandwidth in bytes/s (measured or from a
datasheet by the latency lab, ``convfirst_jax.bench.ceilings``).

* Computational efficiency = (ops / latency) / peak                       [Sec. 2]
* Ideal latency = ops / peak; efficiency gap = latency - ops / peak       [efficiency gap plots]
* Kernel floor = max(ops / peak, bytes / bandwidth)  (the roofline bound of one kernel)
* Waterline of an unfused kernel sequence = sum of the kernel floors       [waterline analysis]
* Fused block floor = max(2 * MACs / peak, (x + out + weights) bytes / bandwidth): a fused
  conv-first block keeps its intermediate (E*C-wide) activations on chip, so device memory
  sees only the input, the output and the weights, and its element-wise work (norm,
  activation, biases) hides under the matmuls (issue 9).

The layer functions take :class:`~convfirst_jax.complexity.costs.LayerCost` rows (a block or a
model's ``ComplexityTable.layers``); the scalar ones take plain numbers, so the math is
testable by hand.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from convfirst_jax.complexity.costs import LayerCost


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


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


def bound(flops: float, nbytes: float, peak: float, bandwidth: float) -> str:
    """"compute" or "memory": which term of the kernel floor is larger."""
    return "compute" if flops / peak >= nbytes / bandwidth else "memory"


def layer_floor(layer: LayerCost, peak: float, bandwidth: float) -> float:
    """Floor of one unfused op: max(flops / peak, bytes_total / bandwidth)."""
    return kernel_floor(layer.flops, layer.bytes_total, peak, bandwidth)


def waterline_per_layer(layers: Iterable[LayerCost], peak: float,
                        bandwidth: float) -> list[float]:
    """Floor of every kernel of an unfused sequence (Lavin 2024, waterline analysis)."""
    return [layer_floor(l, peak, bandwidth) for l in layers]


def waterline(layers: Iterable[LayerCost], peak: float, bandwidth: float) -> float:
    """Waterline of an unfused kernel sequence: sum of max(ops/peak, bytes/bandwidth)."""
    return float(sum(waterline_per_layer(layers, peak, bandwidth)))


def fused_block_bytes_moved(block_layers: Sequence[LayerCost]) -> int:
    """x + out + weights of one fused block, from its unfused layer sequence.

    x = what the first op (the k x k conv) reads, out = what the last op (the residual add)
    writes, weights = every weight of the block as its layers hold them. For a ConvFirst
    block whose BatchNorms the kernel folds, ``complexity.fused_block_bytes`` counts the
    folded weight set instead (pass it as ``nbytes`` to :func:`fused_block_floor`).
    """
    if not block_layers:
        raise ValueError("block_layers is empty; pass the unfused layers of one block")
    return int(block_layers[0].act_bytes_read + block_layers[-1].act_bytes_written
               + sum(l.weight_bytes for l in block_layers))


def fused_block_floor(block_layers: Sequence[LayerCost], peak: float, bandwidth: float, *,
                      nbytes: int | None = None) -> float:
    """Floor of one fused conv-first block: max(2 * MACs / peak, bytes / bandwidth).

    ``block_layers``: the block's unfused op sequence (``ComplexityTable.blocks[name]``).
    ``nbytes``: device-memory bytes of the fused kernel; default
    :func:`fused_block_bytes_moved` (x + out + the layers' weights).
    """
    if not block_layers:
        raise ValueError("block_layers is empty; pass the unfused layers of one block")
    if nbytes is None:
        nbytes = fused_block_bytes_moved(block_layers)
    ops = 2 * sum(l.macs for l in block_layers)
    return kernel_floor(ops, nbytes, peak, bandwidth)
