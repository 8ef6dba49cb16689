"""Compaction: structurally pruned (masked) parameters -> smaller dense parameters.

Zeros in a dense matrix make nothing faster; dropping whole MLP neurons and attention
heads does. An MLP neuron / attention head of a block is *removable* when all of its
input-kernel entries (its ``c_fc`` column; its q, k and v columns of ``c_attn``) are
pruned, or all of its output-kernel entries (its ``c_proj`` row(s)) are. Compaction
slices removable groups out of every leaf they touch (kernels and biases), so the
result is an ordinary dense pytree with narrower layers whose outputs equal the
masked model's.

Constant contributions. A group whose input columns are pruned still emits a
constant through its bias, which the groups' default ``include_bias=False`` leaves
unpruned: a neuron ``j`` outputs ``gelu(b_fc[j])``; a head outputs its v-bias (its
causal softmax rows are uniform and sum to 1). That constant reaches the residual
stream through the group's rows of the output projection, so :func:`compact_gpt2`
folds ``const · W_out_rows`` (masked) into the output projection's bias. With the
standard groups (:func:`~jaxprune.sparsity.groups.gpt2_neuron_groups`,
:func:`~jaxprune.sparsity.groups.gpt2_head_groups`) those rows are pruned as well,
and the fold adds exactly zero; it is non-zero when only the input side was pruned.

Only jax/numpy are used: this is pytree surgery; the model side builds its config
from the returned widths (``jaxprune.models.compact``).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.sparsity.groups import GroupMember, GroupSpec, gpt2_head_groups, gpt2_neuron_groups
from jaxprune.sparsity.masks import PyTree, apply_masks, is_none, leaves_with_paths, path_to_str


@dataclasses.dataclass(frozen=True)
class Widths:
    """Per-block widths of a compacted GPT-2 model (block order h_0, h_1, ...)."""

    d_ff: tuple[int, ...]
    n_head: tuple[int, ...]


def _flat(tree: PyTree) -> dict[str, object]:
    return dict(leaves_with_paths(tree, keep_none=True))


def member_index(mem: GroupMember, keep: np.ndarray) -> np.ndarray:
    """Positions along ``mem.axis`` that belong to kept groups, in their original order."""
    shp = [1] * len(mem.shape)
    shp[mem.group_dim] = len(keep)
    along = np.broadcast_to(np.asarray(keep, bool).reshape(shp), mem.shape).reshape(-1)
    return np.flatnonzero(along)


def _member_alive(mask: np.ndarray, mem: GroupMember, num_groups: int) -> np.ndarray:
    axis = mem.axis % mask.ndim
    v = np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis))  # (leaf_shape[axis],)
    y = np.moveaxis(v.reshape(mem.shape), mem.group_dim, 0).reshape(num_groups, -1)
    return np.any(y, axis=1)


def group_keep(masks: PyTree, spec: GroupSpec) -> np.ndarray:
    """bool ``(num_groups,)``: True for groups with some unpruned entry.

    A member leaf without a mask (``None``) counts as fully alive, so such a spec
    keeps every group: compaction never drops weights that were not pruned.
    """
    flat = _flat(masks)
    alive = np.zeros((spec.num_groups,), bool)
    for mem in spec.members:
        m = flat.get(mem.path)
        if m is None:
            return np.ones((spec.num_groups,), bool)
        alive |= _member_alive(np.asarray(m), mem, spec.num_groups)
    return alive


def slice_groups(tree: PyTree, specs: Sequence[GroupSpec], keeps: dict[str, np.ndarray]) -> PyTree:
    """Keeps only the kept groups' slices of every member leaf of ``tree``.

    Works on params and on masks alike (``None`` leaves stay ``None``); ``keeps`` maps
    a spec's name to its boolean keep vector. Leaves outside the specs are unchanged.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_none)
    index = {path_to_str(p): i for i, (p, _) in enumerate(flat)}
    leaves = [x for _, x in flat]
    for spec in specs:
        keep = np.asarray(keeps[spec.name], bool)
        for mem in spec.members:
            i = index[mem.path]
            if leaves[i] is not None:
                leaves[i] = jnp.take(leaves[i], member_index(mem, keep), axis=mem.axis % jnp.ndim(leaves[i]))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def compact_gpt2(
    params: PyTree, masks: PyTree | None, head_dim: int, *, neurons: bool = True, heads: bool = True
) -> tuple[PyTree, Widths]:
    """Drops dead MLP neurons and attention heads of a GPT-2-layout model.

    Args:
      params: parameters (``h_i/attn/c_attn``, ``h_i/mlp/c_fc`` ... as in jaxprune's
        transformer); any per-block widths.
      masks: masks of ``params`` (``None`` leaves = not pruned), or None for none. The
        masks are applied first, so the result equals the *masked* model.
      head_dim: attention head dimension (``d_model // n_head`` of the original model).
      neurons, heads: which kinds of groups to remove.

    Returns:
      ``(new_params, widths)``: dense params in which each block keeps only its live
      neurons / heads (original order), and their per-block counts. Constant
      contributions of dropped groups (see the module docstring) are folded into the
      output projections' biases.

    >>> # new, w = compact_gpt2(params, masks, cfg.head_dim)
    >>> # model = build_model(dataclasses.replace(cfg, layer_d_ff=w.d_ff, layer_n_head=w.n_head))
    """
    p = apply_masks(params, masks)
    m = masks if masks is not None else jax.tree.map(lambda _: None, params)
    flat = _flat(p)
    neuron_keep_specs, neuron_cut_specs = gpt2_neuron_groups(p), gpt2_neuron_groups(p, include_bias=True)
    head_keep_specs = gpt2_head_groups(p, head_dim=head_dim)
    head_cut_specs = gpt2_head_groups(p, include_bias=True, head_dim=head_dim)
    keeps: dict[str, np.ndarray] = {}
    bias_add: dict[str, jax.Array] = {}
    def keep_of(spec: GroupSpec) -> np.ndarray:  # removable: whole input side or whole output side pruned
        ins, outs = (GroupSpec(spec.name, spec.num_groups, (mem,)) for mem in (spec.members[0], spec.members[-1]))
        return group_keep(m, ins) & group_keep(m, outs)

    if neurons:
        for spec in neuron_keep_specs:
            keep = keep_of(spec)
            keeps[spec.name] = keep
            blk = spec.name[: -len("/mlp")]
            drop = np.flatnonzero(~keep)
            # removed neuron: c_fc column 0 -> constant gelu(b_fc[j]); or c_proj row 0 -> adds 0
            b_fc = jnp.asarray(flat[f"{blk}/mlp/c_fc/bias"])[drop]
            w_out = jnp.asarray(flat[f"{blk}/mlp/c_proj/kernel"])[drop]  # (dropped, E)
            bias_add[f"{blk}/mlp/c_proj/bias"] = jax.nn.gelu(b_fc, approximate=True) @ w_out
    if heads:
        for spec in head_keep_specs:
            keep = keep_of(spec)
            keeps[spec.name] = keep
            blk = spec.name[: -len("/attn")]
            h = spec.num_groups
            drop = np.flatnonzero(~keep)
            # removed head: q, k, v columns 0 -> outputs its v-bias (uniform softmax); or c_proj rows 0
            b_v = jnp.asarray(flat[f"{blk}/attn/c_attn/bias"]).reshape(3, h, head_dim)[2, drop]  # (dropped, D)
            w_out = jnp.asarray(flat[f"{blk}/attn/c_proj/kernel"]).reshape(h, head_dim, -1)[drop]  # (dropped, D, E)
            bias_add[f"{blk}/attn/c_proj/bias"] = jnp.einsum("hd,hde->e", b_v, w_out)
    specs = [s for s in neuron_cut_specs if neurons] + [s for s in head_cut_specs if heads]
    out = slice_groups(p, specs, keeps)
    out = jax.tree_util.tree_map_with_path(
        lambda path, x: x + bias_add[path_to_str(path)] if path_to_str(path) in bias_add else x, out)
    d_ff = tuple(int(keeps[s.name].sum()) if neurons else int(flat[s.members[0].path].shape[1])
                 for s in neuron_keep_specs)
    n_head = tuple(int(keeps[s.name].sum()) if heads else s.num_groups for s in head_keep_specs)
    return out, Widths(d_ff, n_head)
