"""Tests for jaxprune.sparsity.masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.sparsity import masks as M

E, H, F, V, T = 8, 2, 16, 12, 6


def gpt2_params(seed: int = 0, n_layer: int = 2) -> dict:
    """A tiny parameter tree with the jaxprune GPT-2 layout (no 'params' key)."""
    rng = np.random.default_rng(seed)

    def a(*shape):
        return jnp.asarray(rng.normal(size=shape).astype(np.float32))

    p = {"wte": {"embedding": a(V, E)}, "wpe": {"embedding": a(T, E)}}
    for i in range(n_layer):
        p[f"h_{i}"] = {
            "ln_1": {"scale": a(E), "bias": a(E)},
            "attn": {
                "c_attn": {"kernel": a(E, 3 * E), "bias": a(3 * E)},
                "c_proj": {"kernel": a(E, E), "bias": a(E)},
            },
            "ln_2": {"scale": a(E), "bias": a(E)},
            "mlp": {
                "c_fc": {"kernel": a(E, F), "bias": a(F)},
                "c_proj": {"kernel": a(F, E), "bias": a(E)},
            },
        }
    p["ln_f"] = {"scale": a(E), "bias": a(E)}
    return p


KERNELS = {
    f"h_{i}/{k}/kernel"
    for i in range(2)
    for k in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj")
}


def prunable_paths(masks) -> set:
    return {p for p, m in M.leaves_with_paths(masks, keep_none=True) if m is not None}


def test_default_filter_selects_attention_and_mlp_kernels_only():
    params = gpt2_params()
    masks = M.create_masks(params)
    assert prunable_paths(masks) == KERNELS
    for p, m in M.leaves_with_paths(masks):
        assert m.dtype == jnp.bool_ and bool(jnp.all(m))
    assert jax.tree_util.tree_structure(
        jax.tree_util.tree_map(lambda _: 0, masks, is_leaf=M.is_none)
    ) == jax.tree_util.tree_structure(params)


def test_default_filter_matches_under_params_collection_key():
    masks = M.create_masks({"params": gpt2_params()})
    assert prunable_paths(masks) == {"params/" + k for k in KERNELS}


def test_include_exclude_patterns():
    params = gpt2_params()
    masks = M.create_masks(params, include=[r"/kernel$"], exclude=[r"^h_1/", r"c_proj"])
    assert prunable_paths(masks) == {"h_0/attn/c_attn/kernel", "h_0/mlp/c_fc/kernel"}
    assert prunable_paths(M.create_masks(params, include=[r"embedding$"])) == {
        "wte/embedding",
        "wpe/embedding",
    }


def test_apply_masks_zeroes_exactly_and_leaves_none_untouched():
    params = gpt2_params()
    masks = M.create_masks(params)
    masks["h_0"]["mlp"]["c_fc"]["kernel"] = jnp.arange(E * F).reshape(E, F) % 3 != 0
    out = jax.jit(M.apply_masks)(params, masks)
    k = np.asarray(out["h_0"]["mlp"]["c_fc"]["kernel"])
    keep = np.arange(E * F).reshape(E, F) % 3 != 0
    assert np.all(k[~keep] == 0.0) and not np.any(np.signbit(k[~keep]))
    np.testing.assert_array_equal(k[keep], np.asarray(params["h_0"]["mlp"]["c_fc"]["kernel"])[keep])
    for path in ("wte/embedding", "h_0/mlp/c_fc/bias", "h_1/mlp/c_fc/kernel"):
        a = dict(M.leaves_with_paths(out))[path]
        b = dict(M.leaves_with_paths(params))[path]
        np.testing.assert_array_equal(a, b)
    assert M.apply_masks(params, None) is params


def test_intersect_count_and_stats():
    params = gpt2_params()
    a = M.create_masks(params)
    b = M.create_masks(params)
    a["h_0"]["attn"]["c_proj"]["kernel"] = jnp.zeros((E, E), bool).at[:, :3].set(True)
    b["h_0"]["attn"]["c_proj"]["kernel"] = jnp.zeros((E, E), bool).at[:, 2:].set(True)
    b["h_1"]["mlp"]["c_proj"]["kernel"] = jnp.zeros((F, E), bool)
    c = M.intersect_masks(a, b)
    np.testing.assert_array_equal(
        c["h_0"]["attn"]["c_proj"]["kernel"], np.zeros((E, E), bool) | (np.arange(E) == 2)
    )
    kept, total = M.count_masks(c)
    total_ref = 2 * (E * 3 * E + E * E + E * F + F * E)
    assert total == total_ref
    assert int(kept) == total_ref - (E * E - E) - F * E
    stats = M.sparsity_stats(c)
    assert set(stats) == KERNELS
    assert stats["h_0/attn/c_proj/kernel"] == pytest.approx(1 - 1 / E)
    assert stats["h_1/mlp/c_proj/kernel"] == 1.0
    assert stats["h_0/mlp/c_fc/kernel"] == 0.0
    assert M.overall_sparsity(c) == pytest.approx(1 - int(kept) / total)
    pruned = M.apply_masks(params, c)
    ws = M.weight_sparsity(pruned, c)
    assert set(ws) == KERNELS and ws["h_1/mlp/c_proj/kernel"] == 1.0
    assert M.weight_sparsity(pruned)["wte/embedding"] == 0.0
