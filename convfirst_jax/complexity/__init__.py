"""Analytic complexity accounting: per-op MACs, FLOPs, parameters and memory traffic.

Lavin 2024 (arXiv 2404.03617), Sec. 2 separates *arithmetic complexity* (operations) from
*computational efficiency* (how fast the hardware executes them); the waterline analysis needs
the bytes each unfused kernel moves. :func:`model_complexity` lists both for every op of a
registered model, built from ``convfirst_jax.specs`` so it can never drift from the Flax models;
:mod:`convfirst_jax.complexity.roofline` turns them into efficiency, waterline and fused-block
floors.

    >>> from convfirst_jax.complexity import model_complexity
    >>> t = model_complexity("convnext_tiny")
    >>> t.params, round(t.macs / 1e9, 3), round(t.fvcore_macs / 1e9, 2)
    (28589128, 4.456, 4.47)
"""

from convfirst_jax.complexity.costs import (  # noqa: F401
    ACTIVATION_FLOPS, ACTIVATION_TRANSCENDENTALS, LAYER_KINDS, CostTotals, LayerCost,
    LayerRecorder, conv_output_size, valid_taps)
from convfirst_jax.complexity.model_table import (  # noqa: F401
    MODEL_TABLE_END, MODEL_TABLE_START, model_table_markdown, model_table_rows, update_readme)
from convfirst_jax.complexity.networks import (  # noqa: F401
    conv_first_block_layers, fused_block_bytes, fused_block_params, model_complexity)
from convfirst_jax.complexity import roofline  # noqa: F401
from convfirst_jax.complexity.table import ComplexityTable, format_count  # noqa: F401

__all__ = [
    "ComplexityTable", "CostTotals", "LayerCost", "LAYER_KINDS", "model_complexity",
    "fused_block_bytes", "fused_block_params", "model_table_markdown", "model_table_rows",
    "update_readme", "roofline",
]
