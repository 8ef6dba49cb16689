"""Compressed checkpoints of sparse models: only the kept values plus a compact mask.

One safetensors file (no pickle). Every prunable leaf (mask not ``None``) is stored
as its kept values, in row-major order, plus either

* ``bitmask``: the mask, one bit per entry (``np.packbits``, big-endian bit order),
  ``ceil(size / 8)`` bytes; or
* ``nm``: for N:M masks (exactly ``n`` kept of every ``m`` consecutive entries along
  axis 0, as :func:`jaxprune.sparsity.select.prune` with ``pattern="nm"`` makes
  them), the position of each kept value inside its group of ``m``, in
  ``ceil(log2 m)`` bits (2 bits for 2:4), packed: ``ceil(kept · bits / 8)`` bytes.
  Values are then ordered group by group: for each group of ``m`` rows and each
  column, its ``n`` kept values by ascending position.

Every other leaf is stored dense. :func:`load_sparse` returns the masked params
(``apply_masks(params, masks)``, pruned entries ``+0.0``) and the masks bit-exactly.
The file is ``8 + header + payload`` bytes; :func:`payload_nbytes` gives the payload.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxprune.sparsity.masks import PyTree, is_none, leaves_with_paths

FORMAT = "jaxprune-sparse/1"


def nm_bits(m: int) -> int:
    """Bits per kept value of an N:M index (2 for m = 4)."""
    return max(1, math.ceil(math.log2(m)))


def _is_nm(mask: np.ndarray, n: int, m: int) -> bool:
    if mask.ndim < 1 or mask.shape[0] % m:
        return False
    g = mask.reshape((mask.shape[0] // m, m, -1))
    return bool(np.all(g.sum(axis=1) == n))


def _pack_bits(idx: np.ndarray, bits: int) -> np.ndarray:
    b = (idx.astype(np.uint32)[:, None] >> np.arange(bits - 1, -1, -1, dtype=np.uint32)) & 1  # (K, bits) MSB first
    return np.packbits(b.astype(np.uint8).reshape(-1))


def _unpack_bits(packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    b = np.unpackbits(packed, count=count * bits).reshape(count, bits).astype(np.int64)
    return b @ (1 << np.arange(bits - 1, -1, -1))


def _encode(path: str, x: np.ndarray, mask: np.ndarray | None, nm: tuple[int, int] | None):
    """(tensors, entry) for one leaf."""
    if mask is None:
        return {path: x}, {"kind": "dense"}
    mask = np.asarray(mask, bool)
    entry = {"kind": "bitmask", "shape": list(x.shape), "dtype": x.dtype.name}
    if nm is not None and _is_nm(mask, *nm):
        n, m = nm
        bits = nm_bits(m)
        g = np.moveaxis(mask.reshape((x.shape[0] // m, m, -1)), 1, 2)  # (G, R, m)
        idx = np.argsort(~g, axis=2, kind="stable")[:, :, :n]  # kept positions, ascending
        vals = np.take_along_axis(np.moveaxis(x.reshape((x.shape[0] // m, m, -1)), 1, 2), idx, axis=2)
        entry.update(kind="nm", n=n, m=m, bits=bits)
        return {f"{path}::values": vals.reshape(-1), f"{path}::nm_index": _pack_bits(idx.reshape(-1), bits)}, entry
    return {f"{path}::values": x.reshape(-1)[mask.reshape(-1)], f"{path}::bitmask": np.packbits(mask.reshape(-1))}, entry


def _decode(path: str, entry: dict, get) -> tuple[np.ndarray, np.ndarray | None]:
    if entry["kind"] == "dense":
        return get(path), None
    shape, dtype = tuple(entry["shape"]), np.dtype(entry["dtype"])
    size = math.prod(shape)
    vals = get(f"{path}::values")
    if entry["kind"] == "bitmask":
        mask = np.unpackbits(get(f"{path}::bitmask"), count=size).astype(bool)
        x = np.zeros(size, dtype)
        x[mask] = vals
        return x.reshape(shape), mask.reshape(shape)
    n, m, bits = entry["n"], entry["m"], entry["bits"]
    g, r = shape[0] // m, size // shape[0]
    idx = _unpack_bits(get(f"{path}::nm_index"), g * r * n, bits).reshape(g, r, n)
    mask = np.zeros((g, r, m), bool)
    x = np.zeros((g, r, m), dtype)
    np.put_along_axis(mask, idx, True, axis=2)
    np.put_along_axis(x, idx, vals.reshape(g, r, n), axis=2)
    return np.moveaxis(x, 2, 1).reshape(shape), np.moveaxis(mask, 2, 1).reshape(shape)


def _encode_tree(params: PyTree, masks: PyTree | None, nm: tuple[int, int] | None):
    flat_p = leaves_with_paths(params)
    flat_m = dict(leaves_with_paths(masks, keep_none=True)) if masks is not None else {}
    tensors: dict[str, np.ndarray] = {}
    entries: dict[str, dict] = {}
    for path, x in flat_p:
        x = np.asarray(x)
        m = flat_m.get(path)
        t, entries[path] = _encode(path, x, None if m is None else np.asarray(m), nm)
        tensors.update({k: np.ascontiguousarray(v) for k, v in t.items()})
    return tensors, entries


def payload_nbytes(params: PyTree, masks: PyTree | None, nm: tuple[int, int] | None = None) -> int:
    """Bytes of the tensors :func:`save_sparse` would write (the file adds 8 + header bytes)."""
    tensors, _ = _encode_tree(params, masks, nm)
    return sum(t.nbytes for t in tensors.values())


def save_sparse(path: str | Path, params: PyTree, masks: PyTree | None, nm: tuple[int, int] | None = None) -> int:
    """Writes params compressed by their masks; returns the file's size in bytes.

    Args:
      path: the .safetensors file to write.
      params: parameter pytree of nested dicts (params are stored masked).
      masks: masks of ``params`` (``None`` leaves, or ``masks=None``, are stored dense).
      nm: ``(n, m)`` to store leaves whose masks are exactly N:M along axis 0 with
        N:M indices; other masked leaves (and all of them when None) use a bitmask.
    """
    tensors, entries = _encode_tree(params, masks, nm)
    save_file(tensors, str(path), metadata={"format": FORMAT, "leaves": json.dumps(entries)})
    return Path(path).stat().st_size


def _unflatten(flat: dict[str, Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = v
    return tree


def load_sparse(path: str | Path) -> tuple[PyTree, PyTree]:
    """Reads a :func:`save_sparse` file: ``(params, masks)`` as nested dicts of numpy arrays.

    ``masks`` has ``None`` on leaves stored dense.
    """
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a jaxprune sparse checkpoint (format {meta.get('format')!r})")
        entries = json.loads(meta["leaves"])
        decoded = {p: _decode(p, e, f.get_tensor) for p, e in entries.items()}
    params = _unflatten({p: x for p, (x, _) in decoded.items()})
    masks = _unflatten({p: m for p, (_, m) in decoded.items()})
    return params, masks


def tree_equal_bits(a: PyTree, b: PyTree) -> bool:
    """True when two trees have the same structure, shapes, dtypes and bytes (None leaves included)."""
    la, ta = jax.tree_util.tree_flatten(a, is_leaf=is_none)
    lb, tb = jax.tree_util.tree_flatten(b, is_leaf=is_none)
    if ta != tb:
        return False
    for x, y in zip(la, lb):
        if (x is None) != (y is None):
            return False
        if x is not None:
            x, y = np.asarray(x), np.asarray(y)
            if x.shape != y.shape or x.dtype != y.dtype or x.tobytes() != y.tobytes():
                return False
    return True
