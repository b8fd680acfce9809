"""jaxsae: sparse dictionary learning for mechanistic interpretability, in JAX."""

__version__ = "0.1.0"
