"""Training loop, data pipeline and reports for convfirst-jax."""
