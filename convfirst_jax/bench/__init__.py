"""Latency lab CLI: ``python -m convfirst_jax.bench {blocks,models,layers} ... --out DIR``.

See :mod:`convfirst_jax.bench.cli` for usage. ``main`` is the ``convfirst-bench`` console
entry point; ``run_lab(options)`` runs a suite from Python (:mod:`convfirst_jax.bench.options`).
Timing, device ceilings, results writers and figures live here too (``timing``, ``ceilings``,
``results``, ``plots``); the roofline math is :mod:`convfirst_jax.complexity.roofline`.
torch/timm (``--compare-torch``) and matplotlib are imported lazily.
"""

from convfirst_jax.bench.cli import (  # noqa: F401
    build_parser, main, parse_options, read_training_summaries, run_lab)

__all__ = ["main", "build_parser", "parse_options", "read_training_summaries", "run_lab"]
