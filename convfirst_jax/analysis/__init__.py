"""Latency-lab analysis: timing, device ceilings, efficiency/waterline math, plots, writers.

Definitions follow Lavin 2024 (arXiv 2404.03617): computational efficiency and the
efficiency gap (Sec. 2, "efficiency gap plots") and the waterline of a kernel sequence
(Sec. 2, "waterline analysis"). Nothing here imports the training stack.
"""

from convfirst_jax.analysis.ceilings import Ceilings, datasheet_ceilings, measure_ceilings
from convfirst_jax.analysis.roofline import (
    OpCost, efficiency, efficiency_gap, fused_floor, ideal_latency, kernel_floor, waterline,
    waterline_per_layer)
from convfirst_jax.analysis.timing import Timing, time_callable, time_jax

__all__ = [
    "Ceilings", "datasheet_ceilings", "measure_ceilings", "OpCost", "efficiency",
    "efficiency_gap", "fused_floor", "ideal_latency", "kernel_floor", "waterline",
    "waterline_per_layer", "Timing", "time_callable", "time_jax",
]
