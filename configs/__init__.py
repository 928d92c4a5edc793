"""ml_collections config files: one get_config() per model size and data setting."""
