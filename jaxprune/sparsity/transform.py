"""Optax integration: keep pruned weights, their gradients and optimizer moments at 0.

A train step with masks is::

    updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
    params = optax.apply_updates(params, updates)

``masked_update`` returns exactly 0.0 updates on pruned entries, so weights that are
0.0 stay 0.0 and no extra masking of the params is needed in the step. Only right
after new masks are computed do the params (and optimizer state) need masking, via
:func:`jaxprune.sparsity.masks.apply_masks` and :func:`mask_optimizer_state`.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from jaxprune.sparsity.masks import PyTree, apply_masks, is_none


def masked_update(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """Wraps ``inner`` so that ``update(..., masks=masks)`` respects the masks.

    Gradients are masked before ``inner.update`` (moments do not accumulate on pruned
    entries) and the resulting updates after it (weight decay cannot regrow them).
    ``masks=None`` (or ``None`` leaves) means dense: no ops are added.
    """
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: PyTree) -> optax.OptState:
        return inner.init(params)

    def update_fn(updates, state, params=None, *, masks=None, **extra):
        if masks is None:
            return inner.update(updates, state, params, **extra)
        updates, state = inner.update(apply_masks(updates, masks), state, params, **extra)
        return apply_masks(updates, masks), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def masked_apply_updates(params: PyTree, updates: PyTree, masks: PyTree | None) -> PyTree:
    """``apply_masks(optax.apply_updates(params, updates), masks)``."""
    return apply_masks(optax.apply_updates(params, updates), masks)


def mask_optimizer_state(state: optax.OptState, masks: PyTree | None) -> optax.OptState:
    """Zeroes pruned entries in every params-shaped subtree of an optimizer state.

    Use after computing new masks so that moments accumulated while the entries
    were alive (e.g. Adam ``mu``/``nu``) do not linger.
    """
    if masks is None:
        return state
    param_def = jax.tree_util.tree_structure(
        jax.tree_util.tree_map(lambda _: 0, masks, is_leaf=is_none)
    )

    def like_params(x: Any) -> bool:
        if x is None:
            return False
        try:
            return jax.tree_util.tree_structure(x) == param_def
        except Exception:  # noqa: BLE001 - foreign node types are simply not params
            return False

    return jax.tree_util.tree_map(
        lambda x: apply_masks(x, masks) if like_params(x) else x, state, is_leaf=like_params
    )
