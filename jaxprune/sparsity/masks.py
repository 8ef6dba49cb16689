"""Sparsity masks: pytrees of boolean arrays mirroring a params tree.

A mask tree has the params' structure with a boolean array (True = keep) on each
prunable leaf and ``None`` on every other leaf. JAX treats ``None`` as an empty
pytree node, so every traversal that pairs masks with another tree uses the masks
as the *first* tree together with ``is_leaf=is_none``.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

DEFAULT_INCLUDE: tuple[str, ...] = (r".*/(attn|mlp)/.*/kernel$",)
DEFAULT_EXCLUDE: tuple[str, ...] = ()


def is_none(x: Any) -> bool:
    """``is_leaf`` predicate that makes ``None`` a leaf in tree traversals."""
    return x is None


def key_to_str(key: Any) -> str:
    """Renders one ``jax.tree_util`` path entry as a string."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return str(key.name)
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    return str(key)


def path_to_str(path: Sequence[Any]) -> str:
    """Joins a ``jax.tree_util`` key path with '/', e.g. ``h_0/attn/c_attn/kernel``."""
    return "/".join(key_to_str(k) for k in path)


def leaves_with_paths(tree: PyTree, keep_none: bool = False) -> list[tuple[str, Any]]:
    """Returns ``[(path_str, leaf), ...]`` in tree-flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=is_none if keep_none else None
    )
    return [(path_to_str(p), leaf) for p, leaf in flat]


def path_filter(
    include: Iterable[str] = DEFAULT_INCLUDE, exclude: Iterable[str] = DEFAULT_EXCLUDE
) -> Callable[[str], bool]:
    """Builds a predicate over '/'-joined paths.

    A path is selected when some ``include`` regex matches it (``re.search``) and
    no ``exclude`` regex does.
    """
    inc = [re.compile(p) for p in include]
    exc = [re.compile(p) for p in exclude]

    def selected(path: str) -> bool:
        return any(r.search(path) for r in inc) and not any(r.search(path) for r in exc)

    return selected


def create_masks(
    params: PyTree,
    include: Iterable[str] = DEFAULT_INCLUDE,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
) -> PyTree:
    """Creates all-True masks on prunable leaves and ``None`` elsewhere.

    Args:
      params: parameter pytree (without the top-level ``'params'`` collection key,
        although the default patterns also match with it).
      include: regexes; a leaf is prunable if one of them matches its path.
      exclude: regexes; a matching leaf is never prunable.

    Returns:
      Mask pytree with the structure of ``params``.
    """
    selected = path_filter(include, exclude)

    def make(path, leaf):
        if selected(path_to_str(path)):
            return jnp.ones(jnp.shape(leaf), dtype=jnp.bool_)
        return None

    return jax.tree_util.tree_map_with_path(make, params)


def apply_masks(params: PyTree, masks: PyTree | None) -> PyTree:
    """Zeroes masked-out entries (exactly 0.0); leaves with a ``None`` mask are untouched."""
    if masks is None:
        return params
    return jax.tree_util.tree_map(
        lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros((), p.dtype)),
        masks,
        params,
        is_leaf=is_none,
    )


def intersect_masks(a: PyTree, b: PyTree) -> PyTree:
    """Elementwise AND of two mask trees (``None`` on a leaf means all-True)."""

    def both(x, y):
        if x is None:
            return y
        if y is None:
            return x
        return jnp.logical_and(x, y)

    return jax.tree_util.tree_map(both, a, b, is_leaf=is_none)


def count_masks(masks: PyTree) -> tuple[jax.Array, int]:
    """Returns ``(number kept, total)`` over prunable leaves; jit-compatible."""
    leaves = [m for m in jax.tree_util.tree_leaves(masks) if m is not None]
    total = int(sum(int(np.prod(m.shape)) for m in leaves))
    kept = sum((jnp.sum(m, dtype=jnp.int32) for m in leaves), jnp.int32(0))
    return kept, total


def sparsity_stats(masks: PyTree) -> dict[str, float]:
    """Fraction of pruned entries per prunable leaf, keyed by path (host floats). Counted where the masks
    live, so masks sharded over several hosts work too."""
    return {
        path: 1.0 - int(jnp.sum(m, dtype=jnp.int32)) / int(np.size(m))
        for path, m in leaves_with_paths(masks)
        if m is not None and np.size(m) > 0
    }


def overall_sparsity(masks: PyTree) -> float:
    """Fraction of pruned entries over all prunable leaves together."""
    kept, total = count_masks(masks)
    return 1.0 - int(kept) / total if total else 0.0


def weight_sparsity(params: PyTree, masks: PyTree | None = None) -> dict[str, float]:
    """Fraction of exact zeros per leaf of ``params`` (prunable leaves only if masks given)."""
    if masks is None:
        items = leaves_with_paths(params)
    else:
        flat_m = leaves_with_paths(masks, keep_none=True)
        flat_p = leaves_with_paths(params)
        items = [(p, w) for (p, w), (_, m) in zip(flat_p, flat_m) if m is not None]
    return {p: float(np.mean(np.asarray(w) == 0)) for p, w in items if np.size(w) > 0}
