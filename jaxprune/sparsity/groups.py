"""Structured pruning groups: which slices of which leaves form one prunable unit.

A :class:`GroupSpec` describes one layer's groups (e.g. the MLP neurons of block 3):
each member leaf contributes a slice along ``axis``; that axis is reshaped to
``shape`` and dimension ``group_dim`` of the reshape is the group index. Pruning a
group zeroes its slice in every member leaf. The model side can build specs for any
layout; helpers for the jaxprune GPT-2 and LLaMA layouts are provided here.
"""

from __future__ import annotations

import dataclasses
import math
import re
import jax
import jax.numpy as jnp

from jaxprune.sparsity.masks import PyTree, leaves_with_paths


@dataclasses.dataclass(frozen=True)
class GroupMember:
    """One leaf's share of a group.

    Attributes:
      path: '/'-joined path of the leaf, e.g. ``h_0/mlp/c_fc/kernel``.
      axis: axis of the leaf along which the groups lie.
      shape: reshape of that axis (product equals its length), e.g. ``(3, H, D)``.
      group_dim: dimension of ``shape`` that indexes the groups.
    """

    path: str
    axis: int
    shape: tuple[int, ...]
    group_dim: int

    def __post_init__(self) -> None:
        # Specs are static jit arguments and must hash, so lists become tuples.
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))


@dataclasses.dataclass(frozen=True)
class GroupSpec:
    """The groups of one layer: ``num_groups`` units spread over ``members``."""

    name: str
    num_groups: int
    members: tuple[GroupMember, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))


def _check(member: GroupMember, leaf_shape: tuple[int, ...], num_groups: int) -> int:
    axis = member.axis % len(leaf_shape)
    if math.prod(member.shape) != leaf_shape[axis] or member.shape[member.group_dim] != num_groups:
        raise ValueError(f"group member {member} does not fit leaf shape {leaf_shape}")
    return axis


def member_group_sums(x: jax.Array, member: GroupMember, num_groups: int) -> jax.Array:
    """Sums a leaf-shaped array over each group's slice; returns shape ``(num_groups,)``."""
    axis = _check(member, x.shape, num_groups)
    # Reduce the other axes first: a sharded leaf then only yields partial sums (an
    # all-reduce of one vector), and the reshape below acts on that small vector.
    v = jnp.sum(x, axis=tuple(a for a in range(x.ndim) if a != axis))  # (leaf_shape[axis],)
    y = jnp.moveaxis(v.reshape(member.shape), member.group_dim, 0).reshape(num_groups, -1)
    return jnp.sum(y, axis=1)


def expand_group_keep(
    keep: jax.Array, member: GroupMember, leaf_shape: tuple[int, ...]
) -> jax.Array:
    """Broadcasts a ``(num_groups,)`` keep vector to a mask broadcastable to the leaf."""
    num_groups = keep.shape[0]
    axis = _check(member, leaf_shape, num_groups)
    shp = [1] * len(member.shape)
    shp[member.group_dim] = num_groups
    along = jnp.broadcast_to(keep.reshape(shp), member.shape).reshape(-1)
    bshape = [1] * len(leaf_shape)
    bshape[axis] = leaf_shape[axis]
    return along.reshape(bshape)


def group_scores(
    spec: GroupSpec, scores: dict[str, jax.Array], masks: dict[str, jax.Array], reduce: str = "sum"
) -> jax.Array:
    """Scores each group of ``spec`` by aggregating its unpruned member entries.

    Args:
      spec: the layer's groups.
      scores: path -> elementwise scores (already-pruned entries may be ``-inf``).
      masks: path -> boolean masks.
      reduce: ``"sum"`` (L1 norm for magnitude scores) or ``"l2"`` (root of the sum
        of squares).

    Returns:
      float32 ``(num_groups,)``; ``-inf`` for groups whose entries are all pruned.
    """
    total = jnp.zeros((spec.num_groups,), jnp.float32)
    alive = jnp.zeros((spec.num_groups,), jnp.int32)
    for mem in spec.members:
        s, m = scores[mem.path], masks[mem.path]
        s = jnp.where(m, s.astype(jnp.float32), 0.0)
        if reduce == "l2":
            s = s * s
        elif reduce != "sum":
            raise ValueError(f"unknown group reduce {reduce!r}")
        total = total + member_group_sums(s, mem, spec.num_groups)
        alive = alive + member_group_sums(m.astype(jnp.int32), mem, spec.num_groups)
    if reduce == "l2":
        total = jnp.sqrt(total)
    return jnp.where(alive > 0, total, -jnp.inf)


def _blocks(params: PyTree) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    shapes = {p: tuple(jnp.shape(x)) for p, x in leaves_with_paths(params)}
    prefixes = sorted(
        {m.group(1) for p in shapes if (m := re.match(r"((?:.*/)?h_\d+)/", p))},
        key=lambda s: int(s.rsplit("_", 1)[1]),
    )
    return shapes, prefixes


def gpt2_neuron_groups(params: PyTree, include_bias: bool = False) -> tuple[GroupSpec, ...]:
    """MLP neurons of the GPT-2 layout: ``c_fc`` column (+ bias entry) with ``c_proj`` row."""
    shapes, blocks = _blocks(params)
    specs = []
    for b in blocks:
        f = shapes[f"{b}/mlp/c_fc/kernel"][1]
        mem = [GroupMember(f"{b}/mlp/c_fc/kernel", 1, (f,), 0)]
        if include_bias:
            mem.append(GroupMember(f"{b}/mlp/c_fc/bias", 0, (f,), 0))
        mem.append(GroupMember(f"{b}/mlp/c_proj/kernel", 0, (f,), 0))
        specs.append(GroupSpec(f"{b}/mlp", f, tuple(mem)))
    return tuple(specs)


def gpt2_head_groups(
    params: PyTree, n_head: int | None = None, include_bias: bool = False, *, head_dim: int | None = None
) -> tuple[GroupSpec, ...]:
    """Attention heads of the GPT-2 layout.

    A head owns its q, k and v columns of ``c_attn`` (columns ``[q | k | v]``, each
    head-major) and its rows of ``c_proj``. Give ``n_head`` (every block has that many
    heads) or ``head_dim`` (a block's head count is read from its ``c_attn`` width,
    ``3 · heads · head_dim``, so compacted models with different head counts per block work).
    """
    if (n_head is None) == (head_dim is None):
        raise ValueError("gpt2_head_groups needs exactly one of n_head and head_dim")
    shapes, blocks = _blocks(params)
    specs = []
    for b in blocks:
        width = shapes[f"{b}/attn/c_attn/kernel"][1] // 3
        h, d = (n_head, width // n_head) if head_dim is None else (width // head_dim, head_dim)
        mem = [GroupMember(f"{b}/attn/c_attn/kernel", 1, (3, h, d), 1)]
        if include_bias:
            mem.append(GroupMember(f"{b}/attn/c_attn/bias", 0, (3, h, d), 1))
        mem.append(GroupMember(f"{b}/attn/c_proj/kernel", 0, (h, d), 0))
        specs.append(GroupSpec(f"{b}/attn", h, tuple(mem)))
    return tuple(specs)


def llama_neuron_groups(params: PyTree) -> tuple[GroupSpec, ...]:
    """MLP neurons of the LLaMA layout: gate and up columns with the down row."""
    shapes, blocks = _blocks(params)
    specs = []
    for b in blocks:
        f = shapes[f"{b}/mlp/up_proj/kernel"][1]
        mem = (
            GroupMember(f"{b}/mlp/gate_proj/kernel", 1, (f,), 0),
            GroupMember(f"{b}/mlp/up_proj/kernel", 1, (f,), 0),
            GroupMember(f"{b}/mlp/down_proj/kernel", 0, (f,), 0),
        )
        specs.append(GroupSpec(f"{b}/mlp", f, mem))
    return tuple(specs)


def llama_head_groups(
    params: PyTree, n_head: int, n_kv_head: int | None = None
) -> tuple[GroupSpec, ...]:
    """Attention heads of the LLaMA layout, one group per key/value head.

    With grouped-query attention a group is a kv head together with the
    ``n_head // n_kv_head`` query heads that share it (query head ``h`` uses kv head
    ``h // (n_head // n_kv_head)``); with ``n_kv_head == n_head`` it is one head.
    """
    n_kv = n_kv_head or n_head
    rep = n_head // n_kv
    shapes, blocks = _blocks(params)
    specs = []
    for b in blocks:
        d = shapes[f"{b}/attn/q_proj/kernel"][1] // n_head
        mem = (
            GroupMember(f"{b}/attn/q_proj/kernel", 1, (n_kv, rep, d), 0),
            GroupMember(f"{b}/attn/k_proj/kernel", 1, (n_kv, d), 0),
            GroupMember(f"{b}/attn/v_proj/kernel", 1, (n_kv, d), 0),
            GroupMember(f"{b}/attn/o_proj/kernel", 0, (n_kv, rep, d), 0),
        )
        specs.append(GroupSpec(f"{b}/attn", n_kv, mem))
    return tuple(specs)


def auto_neuron_groups(params: PyTree) -> tuple[GroupSpec, ...]:
    """Neuron groups for whichever known layout (GPT-2 or LLaMA) ``params`` has."""
    paths = [p for p, _ in leaves_with_paths(params)]
    if any(p.endswith("/mlp/up_proj/kernel") for p in paths):
        return llama_neuron_groups(params)
    return gpt2_neuron_groups(params)
