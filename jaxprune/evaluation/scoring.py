"""Batched, jit-compiled scoring of token sequences: loglikelihoods and greedy generation.

Works with any `apply_fn(params, tokens (B, T) int32) -> logits (B, T, V)` of a
causal LM, so dense, masked or sharded parameters all go through the same code.
Rows are right-padded (a causal model's earlier positions never see the padding)
into a few length buckets and a fixed batch size, so the number of compilations is
the number of buckets used, not the number of distinct lengths. The batch is the
leading dimension of every array; nothing here assumes a host or device layout:
pass `batch_sharding` (e.g. `jaxprune.parallel.batch_sharding(mesh)`) to split each
batch over devices (and hosts), or leave it None on one device.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ApplyFn = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class ModuleApply:
    """`apply_fn` for a Flax module: hashable, so its compiled scoring functions are reused."""

    module: Any
    batch_sharding: Any = None  # optional: constrain the tokens (B, T) to this sharding inside jit

    def __call__(self, params: Any, tokens: jax.Array) -> jax.Array:
        if self.batch_sharding is not None:
            tokens = jax.lax.with_sharding_constraint(tokens, self.batch_sharding)
        return self.module.apply({"params": params}, tokens)


def _put(arrays: Sequence[np.ndarray], sharding: Any) -> list:
    """Host arrays as they are (one device), or as global arrays split by `sharding` over the batch."""
    if sharding is None:
        return list(arrays)
    return [jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index]) for a in arrays]


def _fetch(tree: Any) -> Any:
    """Host copies of results, also when they are sharded over other hosts' devices."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(one, tree)


def _check_batch(batch_size: int, sharding: Any) -> None:
    if sharding is not None:
        try:
            sharding.shard_shape((batch_size, 1))
        except ValueError as e:
            raise ValueError(f"eval batch_size {batch_size} cannot be split by the batch sharding "
                             f"{sharding}: make it a multiple of the data x fsdp devices") from e


class Loglikelihood(NamedTuple):
    """Score of one continuation given its context."""

    logprob: float  # sum of the continuation tokens' log-probabilities
    is_greedy: bool  # every continuation token is the argmax under teacher forcing
    num_tokens: int  # continuation tokens scored (fewer only if the continuation exceeds the context)


def length_buckets(max_len: int, smallest: int = 16) -> tuple[int, ...]:
    """Powers of two from `smallest` below `max_len`, then `max_len`: (16, 32, 64, 100) for 100."""
    out, b = [], smallest
    while b < max_len:
        out.append(b)
        b *= 2
    return tuple(out) + (max_len,)


def _bucket(length: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if length <= b:
            return b
    raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


def _batches(lengths: Sequence[int], buckets: Sequence[int], batch_size: int):
    """Yields (bucket length, request indices) groups: longest first, at most batch_size each."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(_bucket(lengths[i], buckets), []).append(i)
    for width in sorted(groups, reverse=True):
        idx = groups[width]
        for s in range(0, len(idx), batch_size):
            yield width, idx[s:s + batch_size]


# ---------------------------------------------------------------------------
# Loglikelihood
# ---------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=0)
def score_batch(apply_fn: ApplyFn, params: Any, inputs: jax.Array, targets: jax.Array,
                mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-row (sum of target logprobs, all targets argmax, number of targets) where mask is set.

    inputs, targets, mask: (B, T); targets[b, t] is the token that follows inputs[b, :t+1].
    """
    logits = apply_fn(params, inputs).astype(jnp.float32)  # (B, T, V)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
    greedy = jnp.argmax(logits, axis=-1) == targets  # (B, T)
    m = mask.astype(bool)
    return (jnp.sum(jnp.where(m, tok, 0.0), axis=-1), jnp.all(greedy | ~m, axis=-1),
            jnp.sum(m, axis=-1).astype(jnp.int32))


def _truncate(context: Sequence[int], continuation: Sequence[int], max_len: int) -> tuple[list[int], int]:
    """Left-truncates context + continuation to max_len + 1 tokens; returns (tokens, n scored)."""
    if not continuation:
        raise ValueError("a loglikelihood request needs a non-empty continuation")
    if not context:
        raise ValueError("a loglikelihood request needs a non-empty context (prepend an EOS token)")
    full = list(context) + list(continuation)
    full = full[-(max_len + 1):]
    return full, min(len(continuation), len(full) - 1)


def loglikelihood(apply_fn: ApplyFn, params: Any, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                  max_len: int, batch_size: int, buckets: Sequence[int] | None = None,
                  pad_id: int = 0, batch_sharding: Any = None) -> list[Loglikelihood]:
    """Scores each (context ids, continuation ids) request; results in request order.

    The context is left-truncated so that context + continuation fits `max_len`
    input positions. Rows are right-padded to a bucket width and batches padded to
    `batch_size` rows, so each bucket compiles once. `batch_sharding` (optional) splits
    every batch over devices; batch_size must then be divisible by the number of shards.
    """
    _check_batch(batch_size, batch_sharding)
    buckets = tuple(buckets or length_buckets(max_len))
    if buckets[-1] < max_len:
        buckets += (max_len,)
    rows = [_truncate(c, t, max_len) for c, t in requests]
    lengths = [len(full) - 1 for full, _ in rows]
    pending = []
    for width, idx in _batches(lengths, buckets, batch_size):
        inputs = np.full((batch_size, width), pad_id, np.int32)
        targets = np.full((batch_size, width), pad_id, np.int32)
        mask = np.zeros((batch_size, width), np.bool_)
        for r, i in enumerate(idx):
            full, n = rows[i]
            t = len(full) - 1
            inputs[r, :t], targets[r, :t] = full[:-1], full[1:]
            mask[r, t - n:t] = True
        inputs, targets, mask = _put((inputs, targets, mask), batch_sharding)
        pending.append((idx, score_batch(apply_fn, params, inputs, targets, mask)))  # dispatched asynchronously
    out: list[Loglikelihood | None] = [None] * len(requests)
    for idx, result in pending:
        lp, greedy, n = _fetch(result)
        for r, i in enumerate(idx):
            out[i] = Loglikelihood(float(lp[r]), bool(greedy[r]), int(n[r]))
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Greedy generation
# ---------------------------------------------------------------------------
@functools.partial(jax.jit, static_argnums=(0, 5))
def generate_batch(apply_fn: ApplyFn, params: Any, buffer: jax.Array, lengths: jax.Array, stop_ids: jax.Array,
                   max_new_tokens: int) -> tuple[jax.Array, jax.Array]:
    """Greedy decoding in a fixed (B, W) buffer; returns (buffer, new lengths).

    buffer: prompts right-padded, lengths (B,) their lengths (0 marks an unused row),
    W >= max(lengths) + max_new_tokens. A row stops after emitting any token in
    `stop_ids` (B-independent (S,) array, -1 padded) or after max_new_tokens tokens;
    the loop ends when every row has stopped.
    """
    rows = jnp.arange(buffer.shape[0])

    def cond(state):
        step, _, _, done = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, buf, cur, done = state
        logits = apply_fn(params, buf)  # (B, W, V); causal, so positions >= cur are ignored
        last = logits[rows, jnp.maximum(cur - 1, 0)]  # (B, V)
        nxt = jnp.argmax(last, axis=-1).astype(buf.dtype)  # (B,)
        pos = jnp.minimum(cur, buf.shape[1] - 1)
        buf = buf.at[rows, pos].set(jnp.where(done, buf[rows, pos], nxt))
        stopped = jnp.any(nxt[:, None] == stop_ids[None, :], axis=-1)
        return step + 1, buf, jnp.where(done, cur, cur + 1), done | stopped

    state = (jnp.int32(0), buffer, lengths, lengths == 0)
    _, buffer, cur, _ = jax.lax.while_loop(cond, body, state)
    return buffer, cur


def generate(apply_fn: ApplyFn, params: Any, prompts: Sequence[Sequence[int]], *, max_len: int,
             max_new_tokens: int, batch_size: int, stop_ids: Sequence[int] = (),
             buckets: Sequence[int] | None = None, pad_id: int = 0,
             batch_sharding: Any = None) -> list[list[int]]:
    """Greedy continuation ids of each prompt (ending with the stop token if one was emitted).

    Prompts are left-truncated to max_len - max_new_tokens tokens so the generated
    tokens stay inside the model's context. `batch_sharding` as in :func:`loglikelihood`.
    """
    _check_batch(batch_size, batch_sharding)
    if not 0 < max_new_tokens < max_len:
        raise ValueError(f"max_new_tokens must be in (0, max_len={max_len}), got {max_new_tokens}")
    buckets = tuple(buckets or length_buckets(max_len))
    if buckets[-1] < max_len:
        buckets += (max_len,)
    keep = max_len - max_new_tokens
    trimmed = [list(p)[-keep:] for p in prompts]
    if any(not p for p in trimmed):
        raise ValueError("generation needs non-empty prompts")
    stops = np.array(sorted(set(stop_ids)) or [-1], np.int32)
    pending = []
    for width, idx in _batches([len(p) + max_new_tokens for p in trimmed], buckets, batch_size):
        buf = np.full((batch_size, width), pad_id, np.int32)
        lengths = np.zeros((batch_size,), np.int32)
        for r, i in enumerate(idx):
            buf[r, :len(trimmed[i])] = trimmed[i]
            lengths[r] = len(trimmed[i])
        dbuf, dlengths = _put((buf, lengths), batch_sharding)
        pending.append((idx, lengths, generate_batch(apply_fn, params, dbuf, dlengths, stops, max_new_tokens)))
    out: list[list[int]] = [[] for _ in prompts]
    for idx, start, result in pending:
        buf, end = _fetch(result)
        for r, i in enumerate(idx):
            out[i] = [int(t) for t in buf[r, start[r]:end[r]]]
    return out
