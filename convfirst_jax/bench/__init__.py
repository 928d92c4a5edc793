"""Latency lab CLI: ``python -m convfirst_jax.bench {blocks,models,layers} ... --out DIR``.

See :mod:`convfirst_jax.bench.cli` for usage. ``main`` is the ``convfirst-bench`` console
entry point. torch/timm (``--compare-torch``) and the Pallas kernels are imported lazily.
"""

from convfirst_jax.bench.cli import build_parser, main, read_training_summaries  # noqa: F401

__all__ = ["main", "build_parser", "read_training_summaries"]
