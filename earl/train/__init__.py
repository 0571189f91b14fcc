"""Training entry points ("recipes"): each stage is a dataclass recipe loaded from YAML plus one `train_*` function."""
