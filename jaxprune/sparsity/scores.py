"""Importance scores: higher means more important (pruned last).

Every score function has the signature
``score_fn(params, masks, *, rng=None, grads=None, activations=None) -> scores``
so that criteria needing gradients (Taylor) or activations (Wanda, SparseGPT) fit
the same registry. Scores are float32 arrays on prunable leaves and ``None``
elsewhere; already-pruned entries get ``-inf`` so they are always pruned first,
which keeps masks monotone.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp

from jaxprune.sparsity.masks import PyTree, is_none


class ScoreFn(Protocol):
    def __call__(
        self,
        params: PyTree,
        masks: PyTree,
        *,
        rng: jax.Array | None = None,
        grads: PyTree | None = None,
        activations: Any = None,
    ) -> PyTree: ...


def _finish(score: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.where(mask, score.astype(jnp.float32), -jnp.inf)


def magnitude_score(
    params: PyTree,
    masks: PyTree,
    *,
    rng: jax.Array | None = None,
    grads: PyTree | None = None,
    activations: Any = None,
) -> PyTree:
    """Magnitude criterion ``|w|``."""
    del rng, grads, activations
    return jax.tree_util.tree_map(
        lambda m, w: None if m is None else _finish(jnp.abs(w), m),
        masks,
        params,
        is_leaf=is_none,
    )


def random_score(
    params: PyTree,
    masks: PyTree,
    *,
    rng: jax.Array | None = None,
    grads: PyTree | None = None,
    activations: Any = None,
) -> PyTree:
    """Random baseline: i.i.d. uniform scores, one folded key per leaf."""
    del grads, activations
    if rng is None:
        raise ValueError("random scores need an rng key")
    flat_m, treedef = jax.tree_util.tree_flatten(masks, is_leaf=is_none)
    flat_s = [
        None if m is None else _finish(jax.random.uniform(jax.random.fold_in(rng, i), m.shape), m)
        for i, m in enumerate(flat_m)
    ]
    del params
    return jax.tree_util.tree_unflatten(treedef, flat_s)


def wanda_score(
    params: PyTree,
    masks: PyTree,
    *,
    rng: jax.Array | None = None,
    grads: PyTree | None = None,
    activations: Any = None,
) -> PyTree:
    """Wanda criterion ``|w_ij| * ||X_j||`` (Sun et al. 2023); ``activations`` holds each
    prunable kernel's per-input squared norms. See :mod:`jaxprune.sparsity.wanda`."""
    from jaxprune.sparsity.wanda import wanda_score as fn  # wanda imports select, which imports this module

    return fn(params, masks, rng=rng, grads=grads, activations=activations)


# SparseGPT is not a score (it also updates weights): see jaxprune.sparsity.sparsegpt.
SCORES: dict[str, Callable[..., PyTree]] = {"magnitude": magnitude_score, "random": random_score,
                                            "wanda": wanda_score}


def compute_scores(name: str, params: PyTree, masks: PyTree, **ctx: Any) -> PyTree:
    """Looks up ``name`` in :data:`SCORES` and applies it."""
    try:
        fn = SCORES[name]
    except KeyError:
        raise ValueError(f"unknown score {name!r}; known: {sorted(SCORES)}") from None
    return fn(params, masks, **ctx)
