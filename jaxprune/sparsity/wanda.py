"""Wanda: pruning by weights and activations (Sun et al. 2023, "A Simple and Effective
Pruning Approach for Large Language Models", arXiv:2306.11695).

The score of weight ``W[j, o]`` of a kernel of shape ``(in, out)`` (this codebase's
layout, ``y = x @ W``) is ``|W[j, o]| * ||X_j||_2``, where ``||X_j||_2`` is the norm of
input feature ``j`` over all calibration tokens. Scores are compared per output
(column ``o`` of the kernel, a row of torch's ``(out, in)`` weight): every output
prunes exactly ``floor(rate * in)`` of its inputs; for N:M the comparison is within
each group of ``m`` consecutive inputs. No weight is updated.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxprune.sparsity.masks import PyTree, is_none
from jaxprune.sparsity.select import nm_keep, num_to_prune, order_keys


def wanda_layer_score(kernel: jax.Array, sq_norms: jax.Array) -> jax.Array:
    """``|W| * ||X_j||`` for a kernel ``(in, out)`` and per-input squared norms ``(in,)``."""
    return jnp.abs(kernel.astype(jnp.float32)) * jnp.sqrt(jnp.maximum(sq_norms.astype(jnp.float32), 0.0))[:, None]


def wanda_score(
    params: PyTree,
    masks: PyTree,
    *,
    rng: jax.Array | None = None,
    grads: PyTree | None = None,
    activations: Any = None,
) -> PyTree:
    """Score-registry form: ``activations`` is a pytree like ``masks`` holding each prunable
    kernel's per-input squared norms ``sum_tokens x_j^2`` (shape ``(in,)``).

    Note the scores are only meaningful per output (see :func:`prune_per_output`) or
    within N:M groups, not globally.
    """
    del rng, grads
    if activations is None:
        raise ValueError("wanda scores need activations: per-input squared norms of every prunable kernel")
    return jax.tree_util.tree_map(
        lambda m, w, a: None if m is None else jnp.where(m, wanda_layer_score(w, a), -jnp.inf),
        masks, params, activations, is_leaf=is_none)


@jax.jit
def prune_per_output(scores: jax.Array, mask: jax.Array, k: jax.Array) -> jax.Array:
    """New mask pruning exactly ``max(k, already pruned)`` entries in each output column.

    ``scores`` and ``mask`` have shape ``(in, out)``; within a column the ``k`` lowest
    scores are pruned, already-pruned entries first (masks stay monotone), ties to the
    lowest input index (as :func:`jaxprune.sparsity.select.select_smallest`). Columns are
    short, so each is sorted: the k-th smallest key is the column's threshold and the
    ties at it are taken in input order (a running count).
    """
    keys = jnp.where(mask, order_keys(scores), jnp.uint32(0))  # (in, out)
    k = jnp.clip(jnp.asarray(k, jnp.int32), 0, keys.shape[0])
    t = jnp.sort(keys, axis=0)[jnp.maximum(k - 1, 0)]  # (out,)
    below = keys < t
    ties = keys == t
    remaining = k - jnp.sum(below, axis=0, dtype=jnp.int32)
    pruned = below | (ties & (jnp.cumsum(ties, axis=0, dtype=jnp.int32) <= remaining))
    return mask & ~(pruned & (k > 0))


@functools.partial(jax.jit, static_argnames=("n", "m"))
def _nm_mask(scores: jax.Array, mask: jax.Array, n: int, m: int) -> jax.Array:
    keys = jnp.where(mask, order_keys(scores), jnp.uint32(0))
    return mask & nm_keep(keys, n, m)


def wanda_prune_layer(
    kernel: jax.Array,
    mask: jax.Array,
    sq_norms: jax.Array,
    *,
    rate: float = 0.5,
    pattern: str = "unstructured",
    n: int = 2,
    m: int = 4,
) -> jax.Array:
    """Wanda mask of one kernel ``(in, out)``.

    Args:
      kernel: weights, ``(in, out)``.
      mask: current mask (True = keep); the result is a subset of it.
      sq_norms: ``sum over calibration tokens of x_j^2`` per input ``j``, ``(in,)``
        (the diagonal of ``X^T X``).
      rate: fraction pruned in every output (``floor(rate * in)`` entries); ignored for N:M.
      pattern: ``"unstructured"`` (per output) or ``"nm"`` (keep ``n`` of every ``m``
        consecutive inputs of each output).

    Returns:
      The new boolean mask.
    """
    scores = wanda_layer_score(kernel, sq_norms)
    if pattern == "nm":
        return _nm_mask(scores, mask, n, m)
    if pattern != "unstructured":
        raise ValueError(f"wanda supports pattern 'unstructured' or 'nm', got {pattern!r}")
    return prune_per_output(scores, mask, num_to_prune(rate, kernel.shape[0]))
