"""Mask selection: exact-k thresholds, unstructured / N:M / structured pruning.

Exact-k selection never sorts. Scores are mapped to uint32 keys whose integer order
is the float order (see :func:`order_keys`); the k-th smallest key is then built bit
by bit from the top (32 counting passes of ``key < candidate``), which is exact and
O(n) memory. Among entries equal to the threshold, those with the lowest position
(tree-flattening order of the leaves, then flat index) are pruned first.

Rounding: a rate ``r`` over ``n`` entries prunes ``floor(r * n)`` of them, where a
Python float ``r`` is taken as the decimal it prints as (so ``0.29 * 100`` gives 29,
not 28); a traced rate is rounded in float32. Global scope uses the total ``n`` over
all prunable leaves; layer-wise scope each leaf's (or each layer's group count for
structured patterns). Rates are cumulative and masks monotone: entries pruned
before keep their key at the minimum and are selected first, so if more than
``floor(r * n)`` were already pruned, nothing new is pruned and none regrows.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.sparsity import groups as groups_lib
from jaxprune.sparsity.masks import PyTree, is_none, path_to_str
from jaxprune.sparsity.scores import compute_scores

_SIGN = np.uint32(0x80000000)


def order_keys(x: jax.Array) -> jax.Array:
    """Maps float scores to uint32 keys with the same order (-0.0 counts as +0.0)."""
    x = jnp.asarray(x, jnp.float32)
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, jnp.float32(0), x), jnp.uint32)
    negative = bits >= _SIGN
    return jnp.where(negative, ~bits, bits | _SIGN)


def keys_to_float(keys: jax.Array) -> jax.Array:
    """Inverse of :func:`order_keys`."""
    keys = jnp.asarray(keys, jnp.uint32)
    bits = jnp.where(keys >= _SIGN, keys & ~_SIGN, ~keys)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def kth_smallest_key(keys: Sequence[jax.Array], k: jax.Array | int) -> jax.Array:
    """The k-th smallest (1-based) key over all arrays in ``keys`` together.

    Finds the largest ``t`` with ``count(key < t) < k`` one bit at a time (32 passes).
    Returns 0 for ``k <= 0`` and the maximal key for ``k`` above the total count.
    Counts are int32, so the total size must stay below 2**31.
    """
    k = jnp.asarray(k, jnp.int32)

    def body(i, ans):
        cand = ans | jax.lax.shift_left(jnp.uint32(1), (31 - i).astype(jnp.uint32))
        count = sum(jnp.sum(kk < cand, dtype=jnp.int32) for kk in keys)
        return jnp.where(count < k, cand, ans)

    return jax.lax.fori_loop(0, 32, body, jnp.uint32(0))


def kth_smallest(x: jax.Array, k: jax.Array | int) -> jax.Array:
    """The exact k-th smallest value (1-based) of a float array, without sorting."""
    return keys_to_float(kth_smallest_key([order_keys(x).reshape(-1)], k))


def _positions(shape: tuple[int, ...]) -> jax.Array:
    """Row-major flat index of every entry, as int32 (elementwise, so it shards like the array)."""
    idx = jnp.zeros(shape, jnp.int32)
    stride = 1
    for d in reversed(range(len(shape))):
        idx = idx + jax.lax.broadcasted_iota(jnp.int32, shape, d) * stride
        stride *= shape[d]
    return idx


def select_smallest(keys: Sequence[jax.Array], k: jax.Array | int) -> list[jax.Array]:
    """Boolean arrays marking exactly ``min(k, total)`` smallest keys over ``keys``.

    Ties at the threshold go to the lowest position (array order, then flat index).
    """
    k = jnp.asarray(k, jnp.int32)
    t = kth_smallest_key(keys, k)
    below = [kk < t for kk in keys]
    ties = [kk == t for kk in keys]
    remaining = k - sum(jnp.sum(b, dtype=jnp.int32) for b in below)
    n_ties = sum(jnp.sum(e, dtype=jnp.int32) for e in ties)

    def take_all_ties():
        return [b | e for b, e in zip(below, ties)]

    def take_first_ties():
        # The first `remaining` ties by position: bisect on the position (31 counting
        # passes, like the threshold) instead of a cumsum, so that sharded arrays are
        # only compared and summed, never gathered.
        pos = [_positions(e.shape) + off for e, off in zip(ties, np.cumsum([0] + [e.size for e in ties]))]

        def body(i, ans):
            cand = ans | jax.lax.shift_left(jnp.int32(1), 30 - i)
            count = sum(jnp.sum(e & (p < cand), dtype=jnp.int32) for e, p in zip(ties, pos))
            return jnp.where(count < remaining, cand, ans)

        last = jax.lax.fori_loop(0, 31, body, jnp.int32(0))  # count(ties & pos <= last) == remaining
        return [b | (e & (p <= last) & (remaining > 0)) for b, e, p in zip(below, ties, pos)]

    # The position search is only needed when the threshold value is shared by more
    # entries than are still to be pruned; skip it in the common (continuous-score) case.
    return jax.lax.cond(n_ties <= remaining, take_all_ties, take_first_ties)


def num_to_prune(rate: Any, n: int) -> jax.Array:
    """``floor(rate * n)`` as int32 (decimal-exact for Python floats), clipped to [0, n]."""
    if isinstance(rate, (int, float, np.floating, np.integer)):
        k = math.floor(Fraction(repr(float(rate))) * n)
        return jnp.int32(min(max(k, 0), n))
    k = jnp.floor(jnp.asarray(rate, jnp.float32) * jnp.float32(n))
    return jnp.clip(k, 0, n).astype(jnp.int32)


def _prunable(scores: PyTree, masks: PyTree) -> tuple[list, list, Any]:
    flat_m, treedef = jax.tree_util.tree_flatten(masks, is_leaf=is_none)
    flat_s = treedef.flatten_up_to(scores) if scores is not None else [None] * len(flat_m)
    return flat_m, flat_s, treedef


def _masked_keys(s: jax.Array, m: jax.Array) -> jax.Array:
    # Pruned entries get key 0 (below every real score) so they are selected first.
    return jnp.where(m, order_keys(s), jnp.uint32(0))


@functools.partial(jax.jit, static_argnames=("scope",))
def _unstructured(scores: PyTree, masks: PyTree, ks: jax.Array, scope: str) -> PyTree:
    flat_m, flat_s, treedef = _prunable(scores, masks)
    idx = [i for i, m in enumerate(flat_m) if m is not None]
    keys = [_masked_keys(flat_s[i], flat_m[i]) for i in idx]
    if scope == "global":
        pruned = select_smallest(keys, ks[0])
    else:
        pruned = [select_smallest([kk], ks[j])[0] for j, kk in enumerate(keys)]
    out = list(flat_m)
    for i, p in zip(idx, pruned):
        out[i] = flat_m[i] & ~p
    return jax.tree_util.tree_unflatten(treedef, out)


def nm_keep(keys: jax.Array, n: int, m: int) -> jax.Array:
    """Keeps the ``n`` largest of every ``m`` consecutive entries along axis 0.

    Ties are broken by position: the earlier entry of equal keys is pruned first.
    """
    if keys.ndim < 1 or keys.shape[0] % m:
        raise ValueError(f"axis 0 of shape {keys.shape} is not divisible by m={m}")
    g = keys.reshape((keys.shape[0] // m, m) + keys.shape[1:])
    a = g[:, :, None]  # entry i
    b = g[:, None, :]  # entry j
    pos = np.arange(m)
    earlier = (pos[None, :] < pos[:, None]).reshape((1, m, m) + (1,) * (keys.ndim - 1))
    rank = jnp.sum((b < a) | ((b == a) & earlier), axis=2, dtype=jnp.int32)
    return (rank >= m - n).reshape(keys.shape)


@functools.partial(jax.jit, static_argnames=("n", "m"))
def _nm(scores: PyTree, masks: PyTree, n: int, m: int) -> PyTree:
    flat_m, flat_s, treedef = _prunable(scores, masks)
    out = [
        None if mk is None else mk & nm_keep(_masked_keys(s, mk), n, m)
        for mk, s in zip(flat_m, flat_s)
    ]
    return jax.tree_util.tree_unflatten(treedef, out)


@functools.partial(jax.jit, static_argnames=("groups", "scope", "reduce"))
def _structured(
    scores: PyTree,
    masks: PyTree,
    ks: jax.Array,
    groups: tuple[groups_lib.GroupSpec, ...],
    scope: str,
    reduce: str,
) -> PyTree:
    flat_m, treedef = jax.tree_util.tree_flatten_with_path(masks, is_leaf=is_none)
    flat_s = treedef.flatten_up_to(scores)
    paths = [path_to_str(p) for p, _ in flat_m]
    index = {p: i for i, p in enumerate(paths)}
    mask_by_path = {p: m for p, (_, m) in zip(paths, flat_m)}
    score_by_path = dict(zip(paths, flat_s))
    for spec in groups:
        missing = [mem.path for mem in spec.members if mask_by_path.get(mem.path) is None]
        if missing:
            raise ValueError(f"group {spec.name}: members without masks: {missing}")
    keys = [
        order_keys(groups_lib.group_scores(spec, score_by_path, mask_by_path, reduce))
        for spec in groups
    ]
    if scope == "global":
        pruned = select_smallest(keys, ks[0])
    else:
        pruned = [select_smallest([kk], ks[j])[0] for j, kk in enumerate(keys)]
    out = [m for _, m in flat_m]
    for spec, p in zip(groups, pruned):
        for mem in spec.members:
            i = index[mem.path]
            out[i] = out[i] & groups_lib.expand_group_keep(~p, mem, out[i].shape)
    return jax.tree_util.tree_unflatten(treedef, out)


def _resolve_groups(
    params: PyTree, pattern: str, groups: Sequence[groups_lib.GroupSpec] | None
) -> tuple[groups_lib.GroupSpec, ...]:
    if groups is not None:
        return tuple(groups)
    if pattern == "head":
        raise ValueError("pattern='head' needs groups, e.g. gpt2_head_groups(params, n_head)")
    return groups_lib.auto_neuron_groups(params)


def prune_counts(
    params: PyTree,
    masks: PyTree,
    rate: Any,
    *,
    scope: str = "global",
    pattern: str = "unstructured",
    groups: Sequence[groups_lib.GroupSpec] | None = None,
) -> jax.Array:
    """How many entries (or groups) :func:`prune` removes per selection unit.

    Returns an int32 vector: one count for global scope, one per prunable leaf (or
    per group spec) for layer-wise scope. Computing it on the host from a Python
    float and passing it to a jitted :func:`prune` as ``counts`` keeps the count
    decimal-exact while compiling once for all rates.
    """
    if scope not in ("global", "layerwise"):
        raise ValueError(f"unknown scope {scope!r}")
    if pattern == "unstructured":
        sizes = [int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(masks)]
    elif pattern in ("neuron", "head"):
        sizes = [g.num_groups for g in _resolve_groups(params, pattern, groups)]
    elif pattern == "nm":
        sizes = []
    else:
        raise ValueError(f"unknown pattern {pattern!r}")
    sizes = [sum(sizes)] if scope == "global" or not sizes else sizes
    return jnp.stack([num_to_prune(rate, c) for c in sizes])


def prune(
    params: PyTree,
    masks: PyTree,
    rate: Any = 0.0,
    *,
    scores: str | Callable[..., PyTree] | PyTree = "magnitude",
    scope: str = "global",
    pattern: str = "unstructured",
    n: int = 2,
    m: int = 4,
    groups: Sequence[groups_lib.GroupSpec] | None = None,
    group_reduce: str = "sum",
    counts: jax.Array | None = None,
    **score_ctx: Any,
) -> PyTree:
    """Computes new masks, a subset of ``masks``; jit-compatible (rate may be traced).

    Args:
      params: parameter pytree.
      masks: current masks (see :func:`jaxprune.sparsity.masks.create_masks`).
      rate: cumulative fraction to prune (ignored by ``pattern="nm"``). A traced
        rate is rounded in float32 and can be off by one entry; pass ``counts``
        from :func:`prune_counts` for exact counts under ``jit``.
      scores: a score pytree, a name in :data:`SCORES`, or a score function; names
        and functions are called as ``fn(params, masks, **score_ctx)``.
      scope: ``"global"`` (one threshold over all prunable leaves / all groups) or
        ``"layerwise"`` (each leaf / each group spec at ``rate``).
      pattern: ``"unstructured"``, ``"nm"`` (keep ``n`` of every ``m`` along the input
        axis 0), ``"neuron"`` or ``"head"`` (whole groups from ``groups``).
      n, m: N:M parameters.
      groups: group specs for structured patterns; for ``"neuron"`` they default to
        :func:`auto_neuron_groups`. Every member leaf must have a mask.
      group_reduce: ``"sum"`` or ``"l2"`` aggregation of member scores per group.
      counts: optional int32 counts replacing ``rate`` (see :func:`prune_counts`).
      **score_ctx: forwarded to a named or callable score (``rng``, ``grads``, ...).

    Returns:
      New mask pytree.
    """
    if isinstance(scores, str):
        scores = compute_scores(scores, params, masks, **score_ctx)
    elif callable(scores):
        scores = scores(params, masks, **score_ctx)
    if counts is None:
        counts = prune_counts(params, masks, rate, scope=scope, pattern=pattern, groups=groups)
    counts = jnp.asarray(counts, jnp.int32).reshape(-1)
    if pattern == "nm":
        return _nm(scores, masks, n, m)
    if pattern == "unstructured":
        return _unstructured(scores, masks, counts, scope)
    groups = _resolve_groups(params, pattern, groups)
    return _structured(scores, masks, counts, groups, scope, group_reduce)
