"""Mask selection: exact-k thresholds, unstructured / N:M / structured pruning.

Exact-k selection never sorts. Scores are mapped to uint32 keys whose integer order
is the float order (see :func:`order_keys`); the k-th smallest key is then found by a
radix select: each pass histograms one digit of the keys (two 16-bit digits) among
the entries whose higher digits match the prefix found so far, so the data is read
once per digit and only histograms (summed across devices under SPMD) cross shards.
Among entries equal to the threshold, those with the lowest position (tree-flattening
order of the leaves, then flat index) are pruned first; when that matters, further
passes of the same loop select over the positions of the ties to find the cut.

Compile time: same-shaped arrays are stacked (one scatter per shape and pass), the
passes are one while loop, and whatever differs between same-shaped arrays (their
place in the stack, threshold and tie cut) reaches their kernels as runtime scalars
(:func:`_unstack`), so the number of compiled kernels depends on the number of
distinct shapes, not on the number of arrays or passes.

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
from typing import Any, Callable, NamedTuple, Sequence

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


def radix_widths(bits: int = 32, selections: int = 1) -> tuple[int, ...]:
    """Digit widths (most significant first) of the radix passes over ``bits``-bit values.

    16-bit digits: two passes over 32-bit keys, and a 65536-bucket histogram costs little
    next to reading the data (fewer passes also compile faster). Many selections at once
    (layer-wise over more than 64 arrays) take 11-bit digits so that their joint histogram
    stays small.
    """
    width = 16 if selections <= 64 else 11
    passes = max(1, -(-bits // width))
    base, extra = divmod(bits, passes)
    return tuple(base + (i < extra) for i in range(passes))


def _locate(counts: jax.Array, rank: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per row of (num, n) counts: the bucket holding the ``rank``-th entry (0 if there is
    none), the number of entries before that bucket and in it. The prefix sums are one masked
    reduction (no scan) and the bucket one argmax, which compile to few kernels."""
    n = counts.shape[1]
    upto = np.arange(n)[None, :, None] >= np.arange(n)[None, None, :]
    cum = jnp.sum(jnp.where(upto, counts[:, None, :], 0), axis=2)  # inclusive prefix sums
    bucket = jnp.argmax(cum >= rank[:, None], axis=1).astype(jnp.int32)
    inside = jnp.take_along_axis(counts, bucket[:, None], 1)[:, 0]
    return bucket, jnp.take_along_axis(cum, bucket[:, None], 1)[:, 0] - inside, inside


def _digit_search(hist: jax.Array, rank: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per row of a (num, buckets) histogram: the bucket holding the ``rank``-th entry, the
    rank within that bucket and the bucket's count. Two levels (rows of a square-ish view,
    then the bucket within the row) keep the prefix sums small."""
    num, size = hist.shape
    rows = 1 << ((size.bit_length() - 1) // 2)
    h = hist.reshape(num, rows, size // rows)
    r, before_r, _ = _locate(jnp.sum(h, axis=2), rank)
    row = jnp.take_along_axis(h, r[:, None, None], 1)[:, 0]
    col, before_c, ties = _locate(row, rank - before_r)
    return r * (size // rows) + col, rank - before_r - before_c, ties


def _unstack(v: jax.Array) -> tuple[jax.Array, ...]:
    """The rows of a small array as separate arrays, produced by one loop that rotates them into
    place. Indexing ``v[i]`` (or using a Python constant) would fold each ``i`` into the kernel
    that consumes it, so that same-shaped arrays would each get their own compiled kernel; as
    results of the loop they are runtime values and share one kernel per shape."""
    v = jnp.asarray(v)
    n = v.shape[0]
    if n == 1:
        return (v[0],)
    init = tuple(jnp.zeros(v.shape[1:], v.dtype) for _ in range(n))
    return jax.lax.fori_loop(0, n, lambda i, c: c[1:] + (v[i],), init)


def _flat_index(shape: tuple[int, ...], dtype: Any, scale: Any = 1) -> jax.Array:
    """Row-major flat index of every entry times ``scale`` (elementwise, so it shards like the
    array)."""
    idx, stride = jnp.zeros(shape, dtype), 1
    for d in reversed(range(len(shape))):
        idx = idx + jax.lax.broadcasted_iota(dtype, shape, d) * (np.asarray(stride, dtype) * scale)
        stride *= shape[d]
    return idx


class _Stack(NamedTuple):
    """Same-shaped arrays stacked on a new axis 0, so that each pass is one scatter per shape."""

    members: tuple[int, ...]  # indices into the caller's list
    selection: np.ndarray  # (G,) int32: the selection each member belongs to
    offset: np.ndarray  # (G,) uint32: position of the member's first entry within its selection
    shape: tuple[int, ...]


def _stacks(shapes: Sequence[tuple[int, ...]], selection: Sequence[int]) -> list[_Stack]:
    """Non-empty arrays grouped by shape, in order of first appearance."""
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(shapes):
        if int(np.prod(s)):
            by_shape.setdefault(tuple(s), []).append(i)
    start, seen = [], {}
    for i, s in enumerate(shapes):
        start.append(seen.get(selection[i], 0))
        seen[selection[i]] = start[-1] + int(np.prod(s))
    return [_Stack(tuple(m), np.asarray([selection[i] for i in m], np.int32),
                   np.asarray([start[i] for i in m], np.uint32), s) for s, m in by_shape.items()]


# XLA:CPU fuses a concatenation of at most this many operands, with every operand's producer
# inlined, into one kernel that is slow to compile; larger ones are plain copies.
_FUSED_CONCAT_MAX = 8


def _stacked(arrays: Sequence[jax.Array], st: _Stack, index: Sequence[jax.Array]) -> jax.Array:
    """The stack of ``st``'s members. A few members are written one by one at their runtime
    position ``index[i]`` in the stack (see :func:`_unstack`), which compiles one small kernel
    per shape, instead of concatenated (see :data:`_FUSED_CONCAT_MAX`)."""
    if len(st.members) == 1:
        return arrays[st.members[0]][None]
    if len(st.members) > _FUSED_CONCAT_MAX:
        return jnp.stack([arrays[i] for i in st.members])
    out = jnp.zeros((len(st.members),) + st.shape, arrays[st.members[0]].dtype)
    for i in st.members:
        start = (index[i],) + (0,) * len(st.shape)
        out = jax.lax.dynamic_update_slice(out, arrays[i][None], start, allow_negative_indices=False)
    return out


def _per_member(v: jax.Array, ndim: int) -> jax.Array:
    """A (G,) vector broadcastable against a stacked (G, ...) array."""
    return v.reshape(v.shape + (1,) * ndim)


class _Pass(NamedTuple):
    """Loop state of :func:`_radix_select`."""

    p: jax.Array  # pass index: passes over the keys, then (tie-break) over the positions of the ties
    prefix: jax.Array  # (num,) uint32: digits found so far, in place
    rank: jax.Array  # (num,) int32: rank still to find among the entries matching ``prefix``
    ties: jax.Array  # (num,) int32: entries equal to the key threshold (once the key passes are done)
    key: jax.Array  # (num,) uint32: the key threshold (once the key passes are done)


def _radix_select(values: Sequence[jax.Array], stacks: Sequence[_Stack], num: int, k: jax.Array,
                  tie_break: bool) -> tuple[jax.Array, jax.Array]:
    """Per selection ``s < num``: the ``k[s]``-th smallest (1-based, ``1 <= k[s] <=`` its number
    of entries) uint32 key of the stacked ``values`` whose members belong to ``s``.

    Returns ``(key, last)``, each ``(num,)``: the key and, with ``tie_break``, the position of
    the last entry equal to it among the ``k[s]`` smallest when entries are ordered by (key,
    position); 0xFFFFFFFF when every selection takes all its ties (then the position passes
    are skipped) and without ``tie_break``.

    One pass per digit (see :func:`radix_widths`); each pass is one scatter-add per stack into
    a histogram of ``num * 2**bits`` buckets, counting only entries whose higher digits match
    the selection's prefix found so far. Under SPMD every device counts its own shard and only
    histograms are summed across devices. The passes are the iterations of one while loop
    (keys first, then the positions of the ties, with the same digits), so that each kernel is
    compiled once however many passes run.
    """
    widths = radix_widths(32, num)
    passes, size = len(widths), 1 << widths[0]
    shifts = np.asarray([sum(widths[i + 1:]) for i in range(passes)], np.uint32)
    digit_mask = np.asarray([(1 << w) - 1 for w in widths], np.uint32)
    # the bits of the digits found before each pass
    above = np.asarray([(0xFFFFFFFF << (int(s) + w)) & 0xFFFFFFFF for s, w in zip(shifts, widths)], np.uint32)

    def member(v: jax.Array, st: _Stack, ndim: int) -> jax.Array:
        return _per_member(v[st.selection] if num > 1 else jnp.broadcast_to(v, (len(st.members),)), ndim)

    def body(c: _Pass) -> _Pass:
        key_pass = c.p < passes
        j = jnp.where(key_pass, c.p, c.p - passes)
        shift, dmask, hi = jnp.asarray(shifts)[j], jnp.asarray(digit_mask)[j], jnp.asarray(above)[j]
        hist = jnp.zeros((num * size,), jnp.int32)
        for v, st in zip(values, stacks):
            nd = v.ndim - 1
            if tie_break:
                # Scaled by a loop-dependent 0 / 1 (the positions only matter in the position passes) so
                # that they are not loop-invariant: they would be hoisted out of the loop and kept in memory.
                on = (~key_pass).astype(jnp.uint32)
                pos = _per_member(jnp.asarray(st.offset) * on, nd) + _flat_index(v.shape[1:], jnp.uint32, on)
                val = jnp.where(key_pass, v, pos)
                keep = ((val & hi) == member(c.prefix, st, nd)) & (key_pass | (v == member(c.key, st, nd)))
            else:
                val = v
                keep = (val & hi) == member(c.prefix, st, nd)
            digit = (val >> shift) & dmask  # unsigned: no negative-index wrapping in the scatter
            if num > 1:
                digit = digit + _per_member(jnp.asarray(st.selection.astype(np.uint32) * np.uint32(size)), nd)
            hist = hist.at[jnp.where(keep, digit, np.uint32(num * size))].add(1, mode="drop")  # out of range: dropped
        digit, rank, ties = _digit_search(hist.reshape(num, size), c.rank)
        prefix = c.prefix | (digit.astype(jnp.uint32) << shift)
        keys_done = c.p == passes - 1
        return _Pass(c.p + 1, jnp.where(keys_done, jnp.uint32(0), prefix), rank,
                     jnp.where(keys_done, ties, c.ties), jnp.where(keys_done, prefix, c.key))

    def more(c: _Pass) -> jax.Array:
        # The position passes are only needed when a threshold value is shared by more entries
        # than are still to be taken; they are skipped in the common (continuous-score) case.
        if not tie_break:
            return c.p < passes
        return (c.p < passes) | ((c.p < 2 * passes) & jnp.any(c.ties > c.rank))

    zeros = jnp.zeros((num,), jnp.uint32)
    c = jax.lax.while_loop(more, body, _Pass(jnp.int32(0), zeros, k, jnp.zeros((num,), jnp.int32), zeros))
    return c.key, jnp.where(c.p > passes, c.prefix, jnp.uint32(0xFFFFFFFF))


def _select(keys: Sequence[jax.Array], k: jax.Array, selection: Sequence[int], num: int) -> list[jax.Array]:
    """Boolean arrays marking, for every selection ``s``, its ``min(k[s], size)`` smallest keys;
    ``keys[i]`` belongs to selection ``selection[i]``. Ties go to the lowest position (array
    order within the selection, then flat index)."""
    shapes = [tuple(kk.shape) for kk in keys]
    sizes = np.zeros(num, np.int64)
    for s, shp in zip(selection, shapes):
        sizes[s] += int(np.prod(shp))
    if sizes.max(initial=0) >= 2**31:
        raise ValueError("selections of 2**31 or more entries are not supported (int32 counts)")
    if sizes.max(initial=0) == 0:
        return [jnp.zeros(s, bool) for s in shapes]
    k = jnp.broadcast_to(jnp.asarray(k, jnp.int32).reshape(-1), (num,))
    take = k > 0
    kc = jnp.clip(k, 1, jnp.asarray(np.maximum(sizes, 1), jnp.int32))
    stacks = _stacks(shapes, selection)
    # Per array: where it is in its stack (its kernels read it back from there, so that it is not
    # kept twice), then its threshold and the last flat index taken among the entries equal to it.
    sel = np.asarray(selection, np.int32)
    offset, member = np.zeros(len(keys), np.int32), np.zeros(len(keys), np.int32)
    stack_of: dict[int, int] = {}
    for n, st in enumerate(stacks):
        offset[list(st.members)] = st.offset
        member[list(st.members)] = np.arange(len(st.members))
        stack_of.update((i, n) for i in st.members)
    member_of = _unstack(member)
    stacked = [_stacked(keys, st, member_of) for st in stacks]
    t, last = _radix_select(stacked, stacks, num, kc, tie_break=True)
    last_all = jnp.where(last == np.uint32(0xFFFFFFFF), np.int32(2**31 - 1), last.astype(jnp.int32))
    lim = jnp.where(take[sel], last_all[sel] - offset, -1)
    thr = jax.lax.bitcast_convert_type(jnp.where(take[sel], t[sel], 0), jnp.int32)
    per_array = _unstack(jnp.stack([lim, thr], axis=1))
    out = []
    for i, kk in enumerate(keys):
        li, ti = per_array[i][0], jax.lax.bitcast_convert_type(per_array[i][1], jnp.uint32)
        if i in stack_of:
            start = (member_of[i],) + (0,) * kk.ndim
            kk = jax.lax.dynamic_slice(stacked[stack_of[i]], start, (1,) + kk.shape, allow_negative_indices=False)[0]
        out.append((kk < ti) | ((kk == ti) & (_flat_index(kk.shape, jnp.int32) <= li)))
    return out


def kth_smallest_key(keys: Sequence[jax.Array], k: jax.Array | int) -> jax.Array:
    """The k-th smallest (1-based) key over all arrays in ``keys`` together.

    Radix select (see :func:`radix_widths`): one histogram pass per digit of the 32-bit
    keys. Returns 0 for ``k <= 0`` and the maximal key for ``k`` above the total count.
    Counts are int32, so the total size must stay below 2**31.
    """
    shapes = [tuple(kk.shape) for kk in keys]
    total = sum(int(np.prod(s)) for s in shapes)
    k = jnp.asarray(k, jnp.int32)
    if total == 0:
        return jnp.where(k > 0, jnp.uint32(0xFFFFFFFF), jnp.uint32(0))
    stacks = _stacks(shapes, [0] * len(keys))
    member = np.zeros(len(keys), np.int32)
    for st in stacks:
        member[list(st.members)] = np.arange(len(st.members))
    member_of = _unstack(member)
    key, _ = _radix_select([_stacked(keys, st, member_of) for st in stacks], stacks, 1,
                           jnp.clip(k, 1, total)[None], tie_break=False)
    return jnp.where(k <= 0, jnp.uint32(0), jnp.where(k > total, jnp.uint32(0xFFFFFFFF), key[0]))


def kth_smallest(x: jax.Array, k: jax.Array | int) -> jax.Array:
    """The exact k-th smallest value (1-based) of a float array, without sorting."""
    return keys_to_float(kth_smallest_key([order_keys(x)], k))


def select_smallest(keys: Sequence[jax.Array], k: jax.Array | int) -> list[jax.Array]:
    """Boolean arrays marking exactly ``min(k, total)`` smallest keys over ``keys``.

    Ties at the threshold go to the lowest position (array order, then flat index).
    The threshold is a radix select over the keys; only if the threshold value is
    shared by more entries than remain to be taken, a second radix select over the
    positions of those ties finds the last one taken. Sharded arrays are only
    histogrammed and compared, never gathered.
    """
    return _select(keys, k, [0] * len(keys), 1)


def select_smallest_each(keys: Sequence[jax.Array], k: jax.Array) -> list[jax.Array]:
    """Like :func:`select_smallest` for every array on its own: ``k[i]`` smallest of ``keys[i]``.

    Same-shaped arrays share their histogram passes (one scatter per shape and pass).
    """
    return _select(keys, k, list(range(len(keys))), len(keys))


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
        pruned = select_smallest_each(keys, ks)
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
        pruned = select_smallest_each(keys, ks)
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
