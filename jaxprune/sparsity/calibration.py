"""Calibration-aware pruning of one linear layer from its input statistics ``X^T X``.

The model-aware part (running the model block by block and collecting ``X^T X`` of
every linear layer) is :mod:`jaxprune.models.capture`; this module only maps
``(kernel, mask, X^T X, n_tokens)`` to ``(kernel, mask)`` for a method name, so it
stays model-agnostic:

* ``"wanda"`` (Sun et al. 2023): per-output selection by ``|w| * ||X_j||``; weights unchanged.
* ``"sparsegpt"`` (Frantar & Alistarh 2023): per-layer count, OBS reconstruction of the rest.
* ``"magnitude"``: per-output selection by ``|w|`` (the calibration-free baseline of the
  same per-output rule; handy for comparisons).

Rates: Wanda and magnitude prune ``floor(rate * in)`` weights in every output; SparseGPT
prunes ``floor(rate * in * out)`` weights per layer (chosen adaptively across outputs).
The experiment's ``pruning.scope`` does not apply to these per-layer methods.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from jaxprune.sparsity.select import num_to_prune
from jaxprune.sparsity.sparsegpt import sparsegpt_prune_layer
from jaxprune.sparsity.wanda import _nm_mask, prune_per_output, wanda_prune_layer

CALIBRATED_METHODS = ("wanda", "sparsegpt")

LayerPruneFn = Callable[[str, jax.Array, jax.Array, jax.Array, int], tuple[jax.Array, jax.Array]]


@functools.partial(jax.jit, static_argnames=("method", "rate", "pattern", "n", "m"))
def _per_output_layer(kernel: jax.Array, mask: jax.Array, stat: jax.Array, *, method: str, rate: float,
                      pattern: str, n: int, m: int) -> tuple[jax.Array, jax.Array]:
    """Wanda or magnitude on one kernel, compiled once per shape: ``(kernel, mask)``."""
    if method == "wanda":
        sq_norms = stat if stat.ndim == 1 else jnp.diag(stat)
        new = wanda_prune_layer(kernel, mask, sq_norms, rate=rate, pattern=pattern, n=n, m=m)
    else:
        s = jnp.abs(kernel).astype(jnp.float32)
        new = _nm_mask(s, mask, n, m) if pattern == "nm" else \
            prune_per_output(s, mask, num_to_prune(rate, kernel.shape[0]))
    return jnp.where(new, kernel, 0).astype(kernel.dtype), new


def layer_pruner(
    method: str,
    rate: float = 0.5,
    *,
    pattern: str = "unstructured",
    n: int = 2,
    m: int = 4,
    blocksize: int = 128,
    damp: float = 0.01,
) -> LayerPruneFn:
    """``fn(path, kernel, mask, stat, n_tokens) -> (kernel, mask)`` for ``method``.

    ``kernel`` and ``mask`` are ``(in, out)``; ``stat`` is ``X^T X`` over the calibration
    tokens, ``(in, in)``, or for Wanda and magnitude also just its diagonal (the squared
    input norms, ``(in,)``). ``fn.statistic`` names the cheapest statistic the method
    needs (``"xtx"`` for SparseGPT, ``"sq_norm"`` otherwise), which
    :func:`jaxprune.models.capture.calibrate_and_prune` then collects. The returned mask
    is a subset of ``mask`` and the kernel is zero wherever the mask is False.
    """
    if pattern not in ("unstructured", "nm"):
        raise ValueError(f"calibrated pruning supports pattern 'unstructured' or 'nm', got {pattern!r}")

    def fn(path: str, kernel: jax.Array, mask: jax.Array, xtx: jax.Array, n_tokens: int):
        del path
        if method == "sparsegpt":
            k = num_to_prune(rate, kernel.size)
            return sparsegpt_prune_layer(kernel, mask, xtx, n_tokens, k, pattern=pattern, n=n, m=m,
                                         blocksize=blocksize, damp=damp)
        if method not in ("wanda", "magnitude"):
            raise ValueError(f"unknown calibrated method {method!r}; known: {CALIBRATED_METHODS + ('magnitude',)}")
        return _per_output_layer(kernel, mask, xtx, method=method, rate=rate, pattern=pattern, n=n, m=m)

    fn.statistic = "xtx" if method == "sparsegpt" else "sq_norm"
    return fn
