"""Toy data with known ground-truth features."""
