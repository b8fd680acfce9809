"""Config presets (ml_collections files for absl's --config flag)."""
