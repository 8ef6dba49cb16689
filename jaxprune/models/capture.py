"""Calibration: the inputs of every linear layer, block by block (for Wanda / SparseGPT).

Per linear layer only a statistic of its inputs is kept: ``X^T X`` (``in x in``, summed
over tokens; SparseGPT's Hessian) or just its diagonal, the per-input squared norms
(``in``; all Wanda needs, and far cheaper). Inputs are captured by intercepting
``nn.Dense`` calls of the existing modules (``flax.linen.intercept_methods``), so the
captured forward is the model's own; layers fed the same input (q/k/v, gate/up) share
one statistic. Memory is bounded by one block's activations (the calibration batch runs
in mini-batches, scanned inside one compiled function per block) plus the residual
stream ``(N, T, E)``. Blocks of equal shapes share their compiled functions, and layers
sharing a statistic are pruned together when the pruner can (``prune_layer.group``:
SparseGPT factors their shared Hessian once).

On a device mesh (``batch_sharding``) nothing leaves the devices: the parameters stay in
their own shardings, the residual stream is split over the batch axes like a training
batch, each statistic is reduced across them (replicated: every device holds ``X^T X``),
and the layer pruner splits each kernel's outputs over the devices
(:func:`jaxprune.sparsity.calibration.output_split`). On several processes every process
passes the same host tokens and copies only its own rows.

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
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxprune.models.presets import ModelConfig
from jaxprune.models.transformer import Block, Transformer

PyTree = Any
# (path inside the block, e.g. "attn/c_attn/kernel", kernel, mask, X^T X or squared input norms, n_tokens)
# -> (kernel, mask)
LayerPruneFn = Callable[[str, jax.Array, jax.Array, jax.Array, int], tuple[jax.Array, jax.Array]]


STATISTICS = ("xtx", "sq_norm")


def _capture(fn: Callable[[], Any], statistic: str = "xtx",
             rows: NamedSharding | None = None) -> tuple[Any, dict[str, jax.Array], tuple[tuple[str, ...], ...]]:
    """Runs ``fn`` (a flax apply) and returns its output, ``{dense path: statistic}`` and the
    groups of dense paths fed one input (so sharing one statistic; a layer called on several
    inputs is a group of its own). Statistic: ``X^T X`` ``(in, in)`` for ``"xtx"``,
    ``sum_tokens x_j^2`` ``(in,)`` for ``"sq_norm"``.
    ``rows``: the sharding of the inputs ``(tokens, in)`` the statistic is computed from (on a
    mesh: tokens split like the batch, every input feature local, so each device sums its own
    tokens and the sums are reduced; left to itself XLA may gather kernels instead)."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; known: {STATISTICS}")
    stats: dict[str, jax.Array] = {}
    seen: list[tuple[Any, jax.Array, list[str]]] = []  # (input, its statistic, paths fed it)

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            inp = args[0]
            entry = next((e for e in seen if e[0] is inp), None)
            if entry is None:
                x = _constrain(inp.astype(jnp.float32).reshape(-1, inp.shape[-1]), rows)  # (tokens, in)
                entry = (inp, gram(x) if statistic == "xtx" else jnp.sum(x * x, axis=0), [])
                seen.append(entry)
            key = "/".join(context.module.path)
            entry[2].append(key)
            stats[key] = stats[key] + entry[1] if key in stats else entry[1]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        out = fn()
    calls = [k for e in seen for k in e[2]]
    groups: list[tuple[str, ...]] = []
    for e in seen:
        if all(calls.count(k) == 1 for k in e[2]):
            groups.append(tuple(e[2]))
        else:
            groups.extend((k,) for k in e[2] if (k,) not in groups)
    return out, stats, tuple(groups)


def gram(x: jax.Array, panel: int = 192) -> jax.Array:
    """``x^T x`` for ``x`` ``(tokens, in)``: only the panels on and above the diagonal are multiplied
    (``in`` split into panels of about ``panel`` features; those below are their transposes), which
    for three panels or more saves a third or more of the work of the full product."""
    d = x.shape[1]
    parts = max(1, round(d / panel))
    if parts < 2:
        return x.T @ x
    edges = [d * i // parts for i in range(parts + 1)]
    cols = [x[:, a:b] for a, b in zip(edges[:-1], edges[1:])]
    upper = {(i, j): cols[i].T @ cols[j] for i in range(parts) for j in range(i, parts)}
    return jnp.concatenate([jnp.concatenate([upper[i, j] if i <= j else upper[j, i].T for j in range(parts)], axis=1)
                            for i in range(parts)], axis=0)


def _block(cfg: ModelConfig, layer: int) -> Block:
    # Blocks know their index when a compacted model gives each layer its own width.
    return Block(cfg, layer) if "layer" in Block.__dataclass_fields__ else Block(cfg)


def _shape_key(cfg: ModelConfig, layer: int) -> int:
    """The block index that matters for compilation: only per-layer widths make blocks differ."""
    return layer if (cfg.layer_d_ff is not None or cfg.layer_n_head is not None) else 0


def _constrain(tree: Any, sharding: NamedSharding | None) -> Any:
    return tree if sharding is None else jax.lax.with_sharding_constraint(tree, sharding)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 5, 6))
def block_stats(cfg: ModelConfig, layer: int, statistic: str, block_params: PyTree, x: jax.Array,
                out_sharding: NamedSharding | None = None,
                rows: NamedSharding | None = None) -> dict[str, jax.Array]:
    """``{"attn/c_attn": statistic, ...}`` of block ``layer``'s linear layers over ``x``
    ``(parts, B, T, E)``, summed over the parts (scanned: one part's activations at a time);
    ``out_sharding`` places the statistics (replicated on a mesh: reduced across the batch shards),
    ``rows`` the inputs they are computed from, ``(tokens, in)`` (see :func:`_capture`)."""
    def body(acc, xb):
        st = _capture(lambda: _block(cfg, layer).apply({"params": block_params}, xb, True), statistic, rows)[1]
        return (st if acc is None else jax.tree.map(jnp.add, acc, st)), None

    first = body(None, x[0])[0]
    return _constrain(jax.lax.scan(body, first, x[1:])[0] if x.shape[0] > 1 else first, out_sharding)


@functools.lru_cache(maxsize=None)
def input_groups(cfg: ModelConfig, layer: int) -> tuple[tuple[str, ...], ...]:
    """The linear layers of block ``layer`` grouped by the input they are fed, e.g.
    ``("attn/q_proj", "attn/k_proj", "attn/v_proj")``: layers of one group share their
    statistic (found by an abstract trace of the block, no compute)."""
    block = _block(cfg, layer)
    x = jax.ShapeDtypeStruct((1, 1, cfg.d_model), jnp.dtype(cfg.dtype))
    params = jax.eval_shape(lambda x: block.init(jax.random.key(0), x, True), x)["params"]
    found = []

    def trace(p, x):
        _, stats, groups = _capture(lambda: block.apply({"params": p}, x, True), "sq_norm")
        found.append(groups)
        return stats

    jax.eval_shape(trace, params, x)
    return found[0]


@functools.partial(jax.jit, static_argnums=(0, 1, 4))
def block_forward(cfg: ModelConfig, layer: int, block_params: PyTree, x: jax.Array,
                  out_sharding: NamedSharding | None = None) -> jax.Array:
    """Output of block ``layer`` for ``x`` ``(parts, B, T, E)``, one part at a time (placed like
    ``out_sharding`` when given)."""
    return _constrain(jax.lax.map(lambda xb: _block(cfg, layer).apply({"params": block_params}, xb, True), x),
                      out_sharding)


@functools.partial(jax.jit, static_argnums=0)
def model_stats(cfg: ModelConfig, params: PyTree, tokens: jax.Array) -> dict[str, jax.Array]:
    """``{"h_0/attn/c_attn": X^T X, ...}`` of every linear layer in one full-model forward."""
    return _capture(lambda: Transformer(cfg).apply({"params": params}, tokens, True))[1]


@functools.partial(jax.jit, static_argnums=(0, 3))
def embed(cfg: ModelConfig, params: PyTree, tokens: jax.Array,
          out_sharding: NamedSharding | None = None) -> jax.Array:
    """The residual stream entering block 0, ``(..., T, E)`` for tokens ``(..., T)``, as in
    :class:`Transformer` (placed like ``out_sharding`` when given)."""
    x = jnp.take(params["wte"]["embedding"], tokens, axis=0)
    if cfg.arch != "llama":
        x = x + params["wpe"]["embedding"][: tokens.shape[-1]]
    return _constrain(x.astype(jnp.dtype(cfg.dtype)), out_sharding)


def _parts(x: jax.Array, size: int) -> list[jax.Array]:
    """``(N, ...)`` as ``(parts, size, ...)`` plus, if ``size`` does not divide ``N``, ``(1, rest, ...)``."""
    n = x.shape[0]
    full = (n // size) * size
    out = [x[:full].reshape((n // size, size) + x.shape[1:])] if full else []
    return out + ([x[full:][None]] if full < n else [])


def calibrate_and_prune(
    cfg: ModelConfig,
    params: PyTree,
    masks: PyTree,
    tokens: np.ndarray | jax.Array,
    prune_layer: LayerPruneFn | None,
    batch_size: int = 8,
    on_block: Callable[[int, dict[str, jax.Array]], None] | None = None,
    statistic: str | None = None,
    batch_sharding: NamedSharding | None = None,
) -> tuple[PyTree, PyTree]:
    """Sequential block-by-block calibration and pruning.

    Args:
      cfg: model config.
      params: model parameters (``h_i`` blocks as in :class:`Transformer`).
      masks: mask pytree (``None`` on leaves that are not pruned); every prunable
        leaf must be a linear kernel inside a block.
      tokens: calibration token ids ``(N, T)``.
      prune_layer: ``fn(path, kernel, mask, stat, n_tokens) -> (kernel, mask)`` called
        for every masked kernel of block i after its inputs are captured; ``None``
        only captures (then ``on_block`` sees the statistics of the dense model).
      batch_size: sequences per forward (bounds the activation memory).
      on_block: optional callback ``(i, {path: stat})`` after each block's capture.
      statistic: ``"xtx"`` or ``"sq_norm"`` (see :func:`block_stats`); default: the
        ``statistic`` attribute of ``prune_layer`` if it has one, else ``"xtx"``.
      batch_sharding: calibrate on this sharding's mesh: a training batch's sharding
        (its first dimension split over the batch axes). ``params`` and ``masks`` are then
        arrays already placed on that mesh (on several processes: global arrays), and
        ``tokens`` the same host array on every process. Mini-batches of ``batch_size``
        sequences are split over the batch axes when they divide evenly, else replicated.

    Returns:
      ``(params, masks)`` with every block's prunable kernels replaced (on a mesh: in their
      own shardings).
    """
    statistic = statistic or getattr(prune_layer, "statistic", "xtx")
    params = dict(params)
    masks = dict(masks)
    prunable = {path for path, leaf in _flat(masks) if leaf is not None}
    outside = [p for p in prunable if not p.startswith("h_")]
    if outside:
        raise ValueError(f"calibrated pruning only handles linear kernels inside blocks, not {sorted(outside)}")
    tokens = np.asarray(tokens, np.int32)
    n_seq, seq_len = tokens.shape
    tables = {k: params[k] for k in ("wte", "wpe") if k in params}  # not the whole model onto the device
    parts = [_place(t, batch_sharding) for t in _parts(tokens, batch_size)]  # [((parts, B, T), sharding)]
    xs = [(embed(cfg, tables, t, sh), sh) for t, sh in parts]  # [((parts, B, T, E), its sharding)]
    stat_sh = None if batch_sharding is None else NamedSharding(batch_sharding.mesh, P())
    n_tokens = n_seq * seq_len
    for i in range(cfg.n_layer):
        name = f"h_{i}"
        layer = _shape_key(cfg, i)
        bp, bm = (jax.device_put(params[name]) if batch_sharding is None else params[name]), masks.get(name)
        stats: dict[str, jax.Array] = {}
        for x, sh in xs:
            st = block_stats(cfg, layer, statistic, bp, x, stat_sh, _rows(sh))
            stats = st if not stats else jax.tree.map(jnp.add, stats, st)
        if on_block is not None:
            on_block(i, stats)
        if prune_layer is not None and bm is not None:
            bp, bm = _prune_block(bp, bm, stats, n_tokens, prune_layer, input_groups(cfg, layer))
            params[name], masks[name] = bp, bm
        xs = [(block_forward(cfg, layer, bp, x, sh), sh) for x, sh in xs]
    return params, masks


def _rows(sh: NamedSharding | None) -> NamedSharding | None:
    """The sharding of a block's inputs flattened to ``(tokens, in)`` when the activations ``(parts, B, T, E)``
    are placed by ``sh``: tokens split like ``B``, features whole."""
    return None if sh is None else NamedSharding(sh.mesh, P(sh.spec[1] if len(sh.spec) > 1 else None))


def _place(tokens: np.ndarray, batch_sharding: NamedSharding | None) -> tuple[jax.Array, NamedSharding | None]:
    """Token ids ``(parts, B, T)`` on the device (one device) or on the mesh, split over the batch axes of
    ``batch_sharding`` when they divide ``B`` (else replicated); with the activations' sharding."""
    if batch_sharding is None:
        return jnp.asarray(tokens), None
    axes = batch_sharding.spec[0] if len(batch_sharding.spec) else None
    names = axes if isinstance(axes, tuple) else (() if axes is None else (axes,))
    shards = int(np.prod([batch_sharding.mesh.shape[a] for a in names]))
    spec = P(None, axes) if names and tokens.shape[1] % shards == 0 else P()
    sh = NamedSharding(batch_sharding.mesh, spec)
    # every process holds the same host tokens and copies only its own devices' rows
    return jax.make_array_from_callback(tokens.shape, sh, lambda index: tokens[index]), sh


def _key(path: Any) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _flat(tree: PyTree) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda v: v is None)
    return [(_key(p), leaf) for p, leaf in flat]


def _prune_block(bp: PyTree, bm: PyTree, stats: dict[str, jax.Array], n_tokens: int,
                 prune_layer: LayerPruneFn, groups: tuple[tuple[str, ...], ...] = ()) -> tuple[PyTree, PyTree]:
    """Every masked kernel of the block pruned by ``prune_layer``; kernels of one group of ``groups``
    (layers fed the same input) together through ``prune_layer.group`` when it has one."""
    flat_m, treedef = jax.tree_util.tree_flatten_with_path(bm, is_leaf=lambda v: v is None)
    flat_p = treedef.flatten_up_to(bp)
    new_p, new_m = list(flat_p), [None] * len(flat_m)
    todo: dict[str, list[int]] = {}  # module -> indices of its masked kernel leaves
    for j, (path, mk) in enumerate(flat_m):
        if mk is None:
            continue
        key = _key(path)
        module, _, leaf = key.rpartition("/")
        if leaf != "kernel" or module not in stats:
            raise ValueError(f"calibrated pruning: {key} is not the kernel of a linear layer in the block")
        todo.setdefault(module, []).append(j)
    grouped = [tuple(mod for mod in g if mod in todo) for g in groups] if hasattr(prune_layer, "group") else []
    grouped = [g for g in grouped if len(g) > 1]
    in_group = {mod for g in grouped for mod in g}
    calls = [(g, True) for g in grouped] + [((mod,), False) for mod in todo if mod not in in_group]
    for mods, together in calls:
        idx = [j for mod in mods for j in todo[mod]]
        keys = [_key(flat_m[j][0]) for j in idx]
        kernels, masks_in = [flat_p[j] for j in idx], [flat_m[j][1] for j in idx]
        if together:
            out = prune_layer.group(keys, kernels, masks_in, stats[mods[0]], n_tokens)
        else:
            out = [prune_layer(k, w, mk, stats[mods[0]], n_tokens) for k, w, mk in zip(keys, kernels, masks_in)]
        for j, (w2, m2) in zip(idx, out):
            new_p[j], new_m[j] = w2.astype(flat_p[j].dtype), m2
    return jax.tree_util.tree_unflatten(treedef, new_p), jax.tree_util.tree_unflatten(treedef, new_m)
