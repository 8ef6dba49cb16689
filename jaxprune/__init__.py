"""jaxprune: iterative magnitude pruning of GPT language models in JAX/Flax."""

__version__ = "0.1.0"
