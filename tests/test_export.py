"""Sparse export: compressed safetensors checkpoints that load back bit-exactly."""

import json
import math
import struct

import jax
import numpy as np
import pytest

from jaxprune import sparsity
from jaxprune.models import build_model, init_params, model_config_from_preset
from jaxprune.sparsity.export import load_sparse, nm_bits, payload_nbytes, save_sparse, tree_equal_bits


@pytest.fixture(scope="module")
def params():
    return init_params(build_model(model_config_from_preset("femto")), jax.random.key(0))[0]


def _np_masks(masks):
    return jax.tree.map(lambda m: None if m is None else np.asarray(m), masks, is_leaf=lambda x: x is None)


def _file_parts(path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    return hlen, json.loads(raw[8: 8 + hlen])


def _expected_payload(params, masks, per_kept_bits_nm: int | None) -> int:
    """4 bytes per dense entry; masked leaves: 4 per kept value + mask bytes."""
    total = 0
    flat_m = dict(sparsity.masks.leaves_with_paths(masks, keep_none=True))
    for path, x in sparsity.masks.leaves_with_paths(params):
        m = flat_m[path]
        if m is None:
            total += 4 * x.size
            continue
        k = int(np.sum(m))
        meta = math.ceil(k * per_kept_bits_nm / 8) if per_kept_bits_nm else math.ceil(x.size / 8)
        total += 4 * k + meta
    return total


@pytest.mark.parametrize("pattern", ["unstructured", "nm"])
def test_round_trip_bit_exact_and_size(params, pattern, tmp_path):
    masks = sparsity.prune(params, sparsity.create_masks(params), 0.5, pattern=pattern)
    nm = (2, 4) if pattern == "nm" else None
    path = tmp_path / "sparse.safetensors"
    size = save_sparse(path, params, masks, nm=nm)
    got_p, got_m = load_sparse(path)
    assert tree_equal_bits(got_p, jax.tree.map(np.asarray, sparsity.apply_masks(params, masks)))
    assert tree_equal_bits(got_m, _np_masks(masks))
    hlen, header = _file_parts(path)
    kinds = {e["kind"] for e in json.loads(header["__metadata__"]["leaves"]).values()}
    assert kinds == {"dense", "nm" if nm else "bitmask"}
    payload = _expected_payload(params, masks, nm_bits(4) if nm else None)
    assert payload_nbytes(params, masks, nm) == payload
    assert size == 8 + hlen + payload
    dense_path = tmp_path / "dense.safetensors"
    dense_size = save_sparse(dense_path, params, None)
    dense_hlen, _ = _file_parts(dense_path)
    n = sum(x.size for x in jax.tree.leaves(params))
    assert dense_size == 8 + dense_hlen + 4 * n
    # prunable entries cost 4 * 0.5 + 1/8 bytes instead of 4 (2-bit N:M indices of half the entries: also 1/8)
    prunable = sum(x.size for x in jax.tree.leaves(masks))
    assert payload == 4 * (n - prunable) + prunable * 2 + prunable // 8


def test_nm_index_packing_other_m(params, tmp_path):
    masks = sparsity.prune(params, sparsity.create_masks(params), pattern="nm", n=1, m=8)
    path = tmp_path / "s.safetensors"
    save_sparse(path, params, masks, nm=(1, 8))
    got_p, got_m = load_sparse(path)
    assert tree_equal_bits(got_p, jax.tree.map(np.asarray, sparsity.apply_masks(params, masks)))
    assert tree_equal_bits(got_m, _np_masks(masks))
    assert payload_nbytes(params, masks, (1, 8)) == _expected_payload(params, masks, 3)


def test_masks_that_are_not_nm_fall_back_to_bitmask(params, tmp_path):
    masks = sparsity.prune(params, sparsity.create_masks(params), 0.5)
    path = tmp_path / "s.safetensors"
    save_sparse(path, params, masks, nm=(2, 4))
    _, header = _file_parts(path)
    assert {e["kind"] for e in json.loads(header["__metadata__"]["leaves"]).values()} == {"dense", "bitmask"}
    assert tree_equal_bits(load_sparse(path)[1], _np_masks(masks))


def test_rejects_other_safetensors(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.zeros(3, np.float32)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a jaxprune sparse checkpoint"):
        load_sparse(tmp_path / "x.safetensors")
