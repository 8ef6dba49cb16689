"""Batched, jit-compiled scoring of token sequences: loglikelihoods and generation.

Works with any `apply_fn(params, tokens (B, T) int32) -> logits (B, T, V)` of a
causal LM, so dense, masked or sharded parameters all go through the same code.
Two optional capabilities make it cheaper (`ModuleApply` has both):

* `apply_fn.selects`: `apply_fn(params, tokens, select=(B, S) positions)` returns the
  logits (B, S, V) of those positions only, so loglikelihood runs the LM head and the
  softmax at the scored positions (LAMBADA: 1-3 per passage), not at every position;
* `apply_fn.decode(params, tokens, positions, cache, cache_len=, select=)`: a forward
  pass with a key/value cache, so generation prefills the prompt once and then runs
  one position per new token.

Without them, the same results come from full-length forward passes.
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

    selects = True  # __call__ takes select=: logits of chosen positions only

    def _constrain(self, x: jax.Array) -> jax.Array:
        return x if self.batch_sharding is None else jax.lax.with_sharding_constraint(x, self.batch_sharding)

    def __call__(self, params: Any, tokens: jax.Array, select: jax.Array | None = None) -> jax.Array:
        return self.module.apply({"params": params}, self._constrain(tokens), select=select)

    def decode(self, params: Any, tokens: jax.Array, positions: jax.Array, cache: Any, *,
               cache_len: int | None = None, select: jax.Array | None = None) -> tuple[jax.Array, Any]:
        """(logits, new cache) of tokens (B, S) at positions (B, S) (consecutive per row).

        cache None: a prefill (positions from 0) that starts a cache of cache_len positions."""
        variables = {"params": params} if cache is None else {"params": params, "cache": cache}
        logits, new = self.module.apply(variables, self._constrain(tokens), positions=self._constrain(positions),
                                        decode=True, cache_len=cache_len, select=select, mutable=["cache"])
        return logits, new["cache"]


def _put(arrays: Sequence[np.ndarray], sharding: Any) -> list:
    """Host arrays as they are (one device), or as global arrays split by `sharding` over the batch."""
    if sharding is None:
        return list(arrays)
    return [jax.make_array_from_callback(a.shape, sharding, lambda index, a=a: a[index]) for a in arrays]


def _on_device(params: Any) -> Any:
    """Host (numpy) leaves moved to the default device once: a jitted call would copy them on every batch,
    and with asynchronous dispatch those copies pile up. Device arrays (sharded or not) stay as they are."""
    return jax.tree.map(lambda x: jax.device_put(x) if isinstance(x, np.ndarray) else x, params)


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
def _logits_at(apply_fn: ApplyFn, params: Any, inputs: jax.Array, positions: jax.Array) -> jax.Array:
    """Logits (B, S, V) float32 at positions (B, S) of inputs (B, T): LM head at those positions only
    when apply_fn can select them, else gathered from the full (B, T, V)."""
    if getattr(apply_fn, "selects", False):
        logits = apply_fn(params, inputs, select=positions)
    else:
        logits = jnp.take_along_axis(apply_fn(params, inputs), positions[..., None], axis=1)
    return logits.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def score_batch(apply_fn: ApplyFn, params: Any, inputs: jax.Array, positions: jax.Array, targets: jax.Array,
                mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-row (sum of target logprobs, all targets argmax, number of targets) where mask is set.

    inputs: (B, T); positions, targets, mask: (B, S); targets[b, s] is the token that follows
    inputs[b, :positions[b, s] + 1].
    """
    logits = _logits_at(apply_fn, params, inputs, positions)  # (B, S, V)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, S)
    greedy = jnp.argmax(logits, axis=-1) == targets  # (B, S)
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
    params = _on_device(params)
    buckets = tuple(buckets or length_buckets(max_len))
    if buckets[-1] < max_len:
        buckets += (max_len,)
    rows = [_truncate(c, t, max_len) for c, t in requests]
    lengths = [len(full) - 1 for full, _ in rows]
    pending = []
    for width, idx in _batches(lengths, buckets, batch_size):
        # scored positions per row, padded to a power of two (few compilations per bucket)
        s = _bucket(max(rows[i][1] for i in idx), length_buckets(width, smallest=1))
        inputs = np.full((batch_size, width), pad_id, np.int32)
        positions = np.zeros((batch_size, s), np.int32)
        targets = np.full((batch_size, s), pad_id, np.int32)
        mask = np.zeros((batch_size, s), np.bool_)
        for r, i in enumerate(idx):
            full, n = rows[i]
            t = len(full) - 1
            inputs[r, :t] = full[:-1]
            positions[r, :n] = np.arange(t - n, t)
            targets[r, :n] = full[t - n + 1:]
            mask[r, :n] = True
        arrays = _put((inputs, positions, targets, mask), batch_sharding)
        pending.append((idx, score_batch(apply_fn, params, *arrays)))  # dispatched asynchronously
    out: list[Loglikelihood | None] = [None] * len(requests)
    for idx, result in pending:
        lp, greedy, n = _fetch(result)
        for r, i in enumerate(idx):
            out[i] = Loglikelihood(float(lp[r]), bool(greedy[r]), int(n[r]))
    return out  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------
class Sampling(NamedTuple):
    """Sampling instead of greedy decoding: softmax(logits / temperature) over the top_k tokens (0 = all)."""

    temperature: float = 1.0
    top_k: int = 0
    seed: int = 0


def _choose(logits: jax.Array, sampling: Sampling | None, keys: jax.Array, step: jax.Array) -> jax.Array:
    """Next token (B,) from last-position logits (B, V): argmax, or a sample with each row's own key."""
    if sampling is None:
        return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]  # (B, 1)
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    return jax.vmap(jax.random.categorical)(step_keys, logits)


def _emit(buf, cur, done, nxt, stop_ids):
    """Writes each running row's token at its position; returns (buf, cur, done)."""
    rows = jnp.arange(buf.shape[0])
    pos = jnp.minimum(cur, buf.shape[1] - 1)
    nxt = nxt.astype(buf.dtype)
    buf = buf.at[rows, pos].set(jnp.where(done, buf[rows, pos], nxt))
    stopped = jnp.any(nxt[:, None] == stop_ids[None, :], axis=-1)
    return buf, jnp.where(done, cur, cur + 1), done | stopped


@functools.partial(jax.jit, static_argnums=(0, 5, 6))
def generate_batch(apply_fn: ApplyFn, params: Any, buffer: jax.Array, lengths: jax.Array, stop_ids: jax.Array,
                   max_new_tokens: int, sampling: Sampling | None = None,
                   keys: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Decoding in a fixed (B, W) buffer by full forward passes; returns (buffer, new lengths).

    buffer: prompts right-padded, lengths (B,) their lengths (0 marks an unused row),
    W >= max(lengths) + max_new_tokens. A row stops after emitting any token in
    `stop_ids` (B-independent (S,) array, -1 padded) or after max_new_tokens tokens;
    the loop ends when every row has stopped. Every step reruns the whole buffer:
    the path for an apply_fn without a `decode` method.
    """
    rows = jnp.arange(buffer.shape[0])

    def cond(state):
        step, _, _, done = state
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(state):
        step, buf, cur, done = state
        logits = apply_fn(params, buf)  # (B, W, V); causal, so positions >= cur are ignored
        nxt = _choose(logits[rows, jnp.maximum(cur - 1, 0)], sampling, keys, step)
        return (step + 1, *_emit(buf, cur, done, nxt, stop_ids))

    state = (jnp.int32(0), buffer, lengths, lengths == 0)
    _, buffer, cur, _ = jax.lax.while_loop(cond, body, state)
    return buffer, cur


@functools.partial(jax.jit, static_argnums=(0, 5, 6, 7))
def generate_batch_cached(apply_fn: ApplyFn, params: Any, prompts: jax.Array, lengths: jax.Array,
                          stop_ids: jax.Array, max_new_tokens: int, width: int, sampling: Sampling | None = None,
                          keys: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """As :func:`generate_batch`, with a key/value cache: `apply_fn.decode` prefills the prompts (B, P)
    once into a cache of `width` >= P + max_new_tokens positions, then runs one position per step.
    Returns (buffer (B, width), new lengths)."""
    b, p = prompts.shape
    rows = jnp.arange(b)
    buf = jnp.zeros((b, width), prompts.dtype).at[:, :p].set(prompts)
    logits, cache = apply_fn.decode(params, prompts, jnp.broadcast_to(jnp.arange(p), (b, p)), None,
                                    cache_len=width, select=jnp.maximum(lengths - 1, 0)[:, None])
    nxt = _choose(logits[:, 0], sampling, keys, jnp.int32(0))

    def cond(state):
        step, _, _, done, _, _ = state
        return (step < max_new_tokens - 1) & ~jnp.all(done)

    def body(state):  # emits token `step`, then computes token step + 1 from it
        step, buf, cur, done, nxt, cache = state
        pos = jnp.minimum(cur, width - 1)
        buf, cur, done = _emit(buf, cur, done, nxt, stop_ids)
        logits, cache = apply_fn.decode(params, buf[rows, pos][:, None], pos[:, None], cache)
        return step + 1, buf, cur, done, _choose(logits[:, 0], sampling, keys, step + 1), cache

    # the loop stops before the last token's decode step (nothing would read it); that token is emitted
    # here, a no-op where the loop ended because every row had stopped
    state = (jnp.int32(0), buf, lengths, lengths == 0, nxt, cache)
    _, buf, cur, done, nxt, _ = jax.lax.while_loop(cond, body, state)
    buf, cur, _ = _emit(buf, cur, done, nxt, stop_ids)
    return buf, cur


def generate(apply_fn: ApplyFn, params: Any, prompts: Sequence[Sequence[int]], *, max_len: int,
             max_new_tokens: int, batch_size: int, stop_ids: Sequence[int] = (),
             buckets: Sequence[int] | None = None, pad_id: int = 0, batch_sharding: Any = None,
             sampling: Sampling | None = None, use_cache: bool = True) -> list[list[int]]:
    """Continuation ids of each prompt (ending with the stop token if one was emitted): greedy, or
    sampled per `sampling` (each prompt draws from its own key, fold_in(seed, prompt index), so the
    result does not depend on batching).

    Prompts are left-truncated to max_len - max_new_tokens tokens so the generated
    tokens stay inside the model's context. With an apply_fn that has a `decode` method
    (and use_cache), the prompt is prefilled once into a key/value cache and each new
    token costs one position; otherwise every step reruns the whole buffer.
    `batch_sharding` as in :func:`loglikelihood`.
    """
    _check_batch(batch_size, batch_sharding)
    if not 0 < max_new_tokens < max_len:
        raise ValueError(f"max_new_tokens must be in (0, max_len={max_len}), got {max_new_tokens}")
    if sampling is not None and not (sampling.temperature > 0 and sampling.top_k >= 0):
        raise ValueError(f"sampling needs temperature > 0 and top_k >= 0, got {sampling}")
    cached = use_cache and hasattr(apply_fn, "decode")
    params = _on_device(params)
    buckets = tuple(buckets or length_buckets(max_len))
    if buckets[-1] < max_len:
        buckets += (max_len,)
    keep = max_len - max_new_tokens
    trimmed = [list(p)[-keep:] for p in prompts]
    if any(not p for p in trimmed):
        raise ValueError("generation needs non-empty prompts")
    stops = np.array(sorted(set(stop_ids)) or [-1], np.int32)
    base = jax.random.key(sampling.seed if sampling else 0)
    pending = []
    for width, idx in _batches([len(p) + max_new_tokens for p in trimmed], buckets, batch_size):
        # the prefill needs only the prompts: the smallest bucket that holds them
        p_width = _bucket(max(len(trimmed[i]) for i in idx), buckets) if cached else width
        buf = np.full((batch_size, p_width), pad_id, np.int32)
        lengths = np.zeros((batch_size,), np.int32)
        ids = np.zeros((batch_size,), np.int32)
        for r, i in enumerate(idx):
            buf[r, :len(trimmed[i])] = trimmed[i]
            lengths[r], ids[r] = len(trimmed[i]), i
        keys = jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(base, i))(ids))
        dbuf, dlengths, dkeys = _put((buf, lengths, np.asarray(keys)), batch_sharding)
        dkeys = jax.random.wrap_key_data(dkeys)
        how = sampling._replace(seed=0) if sampling else None  # static; the seed is in the keys
        if cached:
            result = generate_batch_cached(apply_fn, params, dbuf, dlengths, stops, max_new_tokens, width, how, dkeys)
        else:
            result = generate_batch(apply_fn, params, dbuf, dlengths, stops, max_new_tokens, how, dkeys)
        pending.append((idx, lengths, result))
    out: list[list[int]] = [[] for _ in prompts]
    for idx, start, result in pending:
        buf, end = _fetch(result)
        for r, i in enumerate(idx):
            out[i] = [int(t) for t in buf[r, start[r]:end[r]]]
    return out
