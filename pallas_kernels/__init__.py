"""Fused Pallas kernels for convfirst-jax (filled in by the fused-kernel work)."""
