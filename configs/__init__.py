"""ml_collections config files: one get_config(model) per data setting, plus the study recipe."""
