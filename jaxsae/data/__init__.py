"""Data sources for dictionary training."""
