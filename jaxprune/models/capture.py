"""Calibration: the inputs of every linear layer, block by block (for Wanda / SparseGPT).

Only ``X^T X`` (``in x in``, summed over tokens) is kept per linear layer; its diagonal
is Wanda's per-input squared norm. Inputs are captured by intercepting ``nn.Dense``
calls of the existing modules (``flax.linen.intercept_methods``), so the captured
forward is the model's own. Memory is bounded by one block's activations (the
calibration batch runs in mini-batches) plus the residual stream ``(N, T, E)``.

:func:`calibrate_and_prune` is the sequential procedure of SparseGPT (Frantar & Alistarh
2023, Sec. 3) also used by Wanda's reference (Sun et al. 2023): embed the calibration
tokens; for each block i, capture its linears' inputs with the already pruned blocks
0..i-1, prune block i, then run the *pruned* block i to get block i+1's inputs.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.models.presets import ModelConfig
from jaxprune.models.transformer import Block, Transformer

PyTree = Any
# (path inside the block, e.g. "attn/c_attn/kernel", kernel, mask, X^T X, n_tokens) -> (kernel, mask)
LayerPruneFn = Callable[[str, jax.Array, jax.Array, jax.Array, int], tuple[jax.Array, jax.Array]]


def _capture(fn: Callable[[], Any]) -> tuple[Any, dict[str, jax.Array]]:
    """Runs ``fn`` (a flax apply) and returns its output and ``{dense path: X^T X}``."""
    stats: dict[str, jax.Array] = {}

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            x = args[0].astype(jnp.float32).reshape(-1, args[0].shape[-1])  # (tokens, in)
            key = "/".join(context.module.path)
            stats[key] = stats.get(key, 0.0) + x.T @ x  # (in, in)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        out = fn()
    return out, stats


def _block(cfg: ModelConfig, layer: int) -> Block:
    # Blocks know their index when a compacted model gives each layer its own width.
    return Block(cfg, layer) if "layer" in Block.__dataclass_fields__ else Block(cfg)


@functools.partial(jax.jit, static_argnums=(0, 1))
def block_stats(cfg: ModelConfig, layer: int, block_params: PyTree,
                x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Block output ``(B, T, E)`` and ``{"attn/c_attn": X^T X, ...}`` of its linear layers."""
    return _capture(lambda: _block(cfg, layer).apply({"params": block_params}, x, True))


@functools.partial(jax.jit, static_argnums=(0, 1))
def block_forward(cfg: ModelConfig, layer: int, block_params: PyTree, x: jax.Array) -> jax.Array:
    """Output ``(B, T, E)`` of block ``layer``."""
    return _block(cfg, layer).apply({"params": block_params}, x, True)


@functools.partial(jax.jit, static_argnums=0)
def model_stats(cfg: ModelConfig, params: PyTree, tokens: jax.Array) -> dict[str, jax.Array]:
    """``{"h_0/attn/c_attn": X^T X, ...}`` of every linear layer in one full-model forward."""
    return _capture(lambda: Transformer(cfg).apply({"params": params}, tokens, True))[1]


@functools.partial(jax.jit, static_argnums=0)
def embed(cfg: ModelConfig, params: PyTree, tokens: jax.Array) -> jax.Array:
    """The residual stream entering block 0, ``(B, T, E)``, as in :class:`Transformer`."""
    x = jnp.take(params["wte"]["embedding"], tokens, axis=0)
    if cfg.arch != "llama":
        x = x + params["wpe"]["embedding"][: tokens.shape[1]][None]
    return x.astype(jnp.dtype(cfg.dtype))


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def calibrate_and_prune(
    cfg: ModelConfig,
    params: PyTree,
    masks: PyTree,
    tokens: np.ndarray | jax.Array,
    prune_layer: LayerPruneFn | None,
    batch_size: int = 8,
    on_block: Callable[[int, dict[str, jax.Array]], None] | None = None,
) -> tuple[PyTree, PyTree]:
    """Sequential block-by-block calibration and pruning.

    Args:
      cfg: model config.
      params: model parameters (``h_i`` blocks as in :class:`Transformer`).
      masks: mask pytree (``None`` on leaves that are not pruned); every prunable
        leaf must be a linear kernel inside a block.
      tokens: calibration token ids ``(N, T)``.
      prune_layer: ``fn(path, kernel, mask, xtx, n_tokens) -> (kernel, mask)`` called
        for every masked kernel of block i after its inputs are captured; ``None``
        only captures (then ``on_block`` sees the statistics of the dense model).
      batch_size: sequences per forward (bounds the activation memory).
      on_block: optional callback ``(i, {path: X^T X})`` after each block's capture.

    Returns:
      ``(params, masks)`` with every block's prunable kernels replaced.
    """
    params = dict(params)
    masks = dict(masks)
    prunable = {path for path, leaf in _flat(masks) if leaf is not None}
    outside = [p for p in prunable if not p.startswith("h_")]
    if outside:
        raise ValueError(f"calibrated pruning only handles linear kernels inside blocks, not {sorted(outside)}")
    tokens = jnp.asarray(tokens, jnp.int32)
    n_seq, seq_len = tokens.shape
    parts = _chunks(n_seq, batch_size)
    x = jnp.concatenate([embed(cfg, params, tokens[s]) for s in parts])  # (N, T, E)
    n_tokens = n_seq * seq_len
    for i in range(cfg.n_layer):
        name = f"h_{i}"
        bp, bm = params[name], masks.get(name)
        stats: dict[str, jax.Array] = {}
        for s in parts:
            _, st = block_stats(cfg, i, bp, x[s])
            stats = {k: stats.get(k, 0.0) + v for k, v in st.items()}
        if on_block is not None:
            on_block(i, stats)
        if prune_layer is not None and bm is not None:
            bp, bm = _prune_block(bp, bm, stats, n_tokens, prune_layer)
            params[name], masks[name] = bp, bm
        x = jnp.concatenate([block_forward(cfg, i, bp, x[s]) for s in parts])
    return params, masks


def _key(path: Any) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _flat(tree: PyTree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda v: v is None)
    return [(_key(p), leaf) for p, leaf in flat]


def _prune_block(bp: PyTree, bm: PyTree, stats: dict[str, jax.Array], n_tokens: int,
                 prune_layer: LayerPruneFn) -> tuple[PyTree, PyTree]:
    flat_m, treedef = jax.tree_util.tree_flatten_with_path(bm, is_leaf=lambda v: v is None)
    flat_p = treedef.flatten_up_to(bp)
    new_p, new_m = [], []
    for (path, mk), w in zip(flat_m, flat_p):
        key = _key(path)
        if mk is None:
            new_p.append(w)
            new_m.append(None)
            continue
        module, _, leaf = key.rpartition("/")
        if leaf != "kernel" or module not in stats:
            raise ValueError(f"calibrated pruning: {key} is not the kernel of a linear layer in the block")
        w2, m2 = prune_layer(key, w, mk, stats[module], n_tokens)
        new_p.append(w2.astype(w.dtype))
        new_m.append(m2)
    return jax.tree_util.tree_unflatten(treedef, new_p), jax.tree_util.tree_unflatten(treedef, new_m)
