"""Tests for exact-k selection, unstructured, N:M and structured pruning."""

import math
import re
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxprune.sparsity import groups as G
from jaxprune.sparsity import masks as M
from jaxprune.sparsity import schedules
from jaxprune.sparsity import select as S
from test_sparsity_masks import E, F, H, gpt2_params

SETTINGS = settings(max_examples=20, deadline=None)
N_VALUES = 203

_kth = jax.jit(S.kth_smallest)
_select2 = jax.jit(lambda a, b, k: S.select_smallest([S.order_keys(a), S.order_keys(b)], k))


def _values(draw_kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if draw_kind == "normal":
        x = rng.normal(size=N_VALUES).astype(np.float32)
        x[rng.random(N_VALUES) < 0.1] = 0.0
        x[rng.random(N_VALUES) < 0.05] = -0.0
    elif draw_kind == "three":
        x = rng.choice(np.array([-1.5, 0.0, 2.0], np.float32), size=N_VALUES)
    else:  # huge dynamic range, exercising the exponent bits
        x = (rng.normal(size=N_VALUES) * 10.0 ** rng.integers(-30, 30, N_VALUES)).astype(np.float32)
    return x


@SETTINGS
@given(kind=st.sampled_from(["normal", "three", "wide"]), seed=st.integers(0, 2**31), absolute=st.booleans())
def test_kth_smallest_matches_sort(kind, seed, absolute):
    x = _values(kind, seed)
    if absolute:
        x = np.abs(x)
    ref = np.sort(x)
    ks = np.random.default_rng(seed).integers(1, N_VALUES + 1, size=8)
    for k in [1, N_VALUES, *ks]:
        assert _kth(jnp.asarray(x), k) == ref[k - 1]


def test_kth_smallest_infinities():
    x = jnp.asarray([3.0, -jnp.inf, 0.0, jnp.inf, -2.0], jnp.float32)
    assert [float(_kth(x, k)) for k in range(1, 6)] == [-np.inf, -2.0, 0.0, 3.0, np.inf]


@SETTINGS
@given(kind=st.sampled_from(["normal", "three"]), seed=st.integers(0, 2**31), k=st.integers(0, 2 * N_VALUES + 5))
def test_select_smallest_is_stable_sort_prefix(kind, seed, k):
    x = _values(kind, seed)
    a, b = x[:80].reshape(8, 10), x[80:]
    sel_a, sel_b = _select2(jnp.asarray(a), jnp.asarray(b), k)
    selected = np.concatenate([np.asarray(sel_a).ravel(), np.asarray(sel_b).ravel()])
    order = np.argsort(np.concatenate([a.ravel(), b.ravel()]), kind="stable")
    expected = np.zeros(N_VALUES, bool)
    expected[order[: min(k, N_VALUES)]] = True
    np.testing.assert_array_equal(selected, expected)


def _floor_rate(rate: float, n: int) -> int:
    return math.floor(Fraction(str(rate)) * n)


def test_num_to_prune_rounding():
    assert int(S.num_to_prune(0.29, 100)) == 29
    assert int(S.num_to_prune(0.7, 10)) == 7
    assert int(S.num_to_prune(0.999, 10)) == 9
    assert int(S.num_to_prune(1.5, 10)) == 10
    assert int(jax.jit(lambda r: S.num_to_prune(r, 10))(0.25)) == 2


def _flat(masks, scores=None):
    """Concatenated prunable masks (and scores) in flattening order."""
    pm = [(p, m) for p, m in M.leaves_with_paths(masks, keep_none=True) if m is not None]
    out = {p: np.asarray(m) for p, m in pm}
    if scores is None:
        return out
    sc = dict(M.leaves_with_paths(scores))
    return out, {p: np.asarray(sc[p]) for p in out}


@SETTINGS
@given(seed=st.integers(0, 2**31), rate=st.floats(0.0, 1.0), scope=st.sampled_from(["global", "layerwise"]))
def test_unstructured_exact_count_and_lowest_magnitudes(seed, rate, scope):
    params = gpt2_params(seed)
    masks = S.prune(params, M.create_masks(params), rate, scope=scope)
    flat, absw = _flat(masks, jax.tree_util.tree_map(jnp.abs, params))
    if scope == "global":
        n = sum(m.size for m in flat.values())
        assert sum(int((~m).sum()) for m in flat.values()) == _floor_rate(rate, n)
        groups = [(np.concatenate([m.ravel() for m in flat.values()]), np.concatenate([a.ravel() for a in absw.values()]))]
    else:
        for p, m in flat.items():
            assert int((~m).sum()) == _floor_rate(rate, m.size), p
        groups = [(m.ravel(), absw[p].ravel()) for p, m in flat.items()]
    for m, a in groups:
        if m.all() or not m.any():
            continue
        assert a[~m].max() <= a[m].min()


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31), scope=st.sampled_from(["global", "layerwise"]))
def test_iterative_schedule_masks_are_monotone(seed, scope):
    params = gpt2_params(seed)
    masks = M.create_masks(params)
    # An arbitrary (non-magnitude) initial pruning must survive every later stage.
    rng = np.random.default_rng(seed)
    masks = jax.tree_util.tree_map(
        lambda m: None if m is None else jnp.asarray(rng.random(m.shape) > 0.15),
        masks,
        is_leaf=M.is_none,
    )
    prev = _flat(masks)
    for rate in schedules.iterative(0.5, 5):
        params = jax.tree_util.tree_map(lambda w: w + 0.01, M.apply_masks(params, masks))
        masks = S.prune(params, masks, rate, scope=scope, scores="random", rng=jax.random.key(seed))
        cur = _flat(masks)
        for p in cur:
            assert not np.any(cur[p] & ~prev[p]), p
        if scope == "layerwise":
            for p, m in cur.items():
                assert int((~m).sum()) == max(_floor_rate(rate, m.size), int((~prev[p]).sum()))
        else:
            n = sum(m.size for m in cur.values())
            before = sum(int((~m).sum()) for m in prev.values())
            assert sum(int((~m).sum()) for m in cur.values()) == max(_floor_rate(rate, n), before)
        prev = cur


def test_prune_with_traced_rate_or_counts_under_jit():
    params = gpt2_params(1)
    masks = M.create_masks(params)
    fn = jax.jit(lambda p, m, r: S.prune(p, m, r))
    for rate in (0.25, 0.5):
        kept, total = M.count_masks(fn(params, masks, jnp.float32(rate)))
        assert total - int(kept) == int(rate * total)
    # float32(0.7) * 10 floors to 6; host-computed counts keep the decimal-exact 7.
    small = {"h_0": {"mlp": {"w": {"kernel": jnp.arange(10.0).reshape(5, 2)}}}}
    small_masks = M.create_masks(small)
    with_counts = jax.jit(lambda p, m, c: S.prune(p, m, counts=c))
    counts = S.prune_counts(small, small_masks, 0.7)
    assert counts.tolist() == [7]
    out = with_counts(small, small_masks, counts)["h_0"]["mlp"]["w"]["kernel"]
    np.testing.assert_array_equal(np.asarray(out).ravel(), np.arange(10) >= 7)
    assert S.prune_counts(params, masks, 0.5, scope="layerwise").tolist() == [
        m.size // 2 for m in jax.tree_util.tree_leaves(masks)
    ]
    assert S.prune_counts(params, masks, 0.5, scope="layerwise", pattern="neuron").tolist() == [F // 2] * 2


@SETTINGS
@given(seed=st.integers(0, 2**31), nm=st.sampled_from([(2, 4), (1, 4), (3, 8)]), ties=st.booleans())
def test_nm_pattern_holds_in_every_group(seed, nm, ties):
    n, m = nm
    rng = np.random.default_rng(seed)
    params = gpt2_params(seed)
    if ties:
        params = jax.tree_util.tree_map(lambda w: jnp.asarray(rng.integers(0, 2, w.shape), jnp.float32), params)
    masks = S.prune(params, M.create_masks(params), pattern="nm", n=n, m=m)
    flat, absw = _flat(masks, jax.tree_util.tree_map(jnp.abs, params))
    for p, mk in flat.items():
        g = mk.reshape(mk.shape[0] // m, m, -1)
        a = absw[p].reshape(g.shape)
        assert np.all(g.sum(axis=1) == n), p
        for i, j in zip(*np.nonzero(np.ones(g.shape[::2], bool))):
            order = np.argsort(a[i, :, j], kind="stable")
            expected = np.zeros(m, bool)
            expected[order[m - n :]] = True
            np.testing.assert_array_equal(g[i, :, j], expected)


def _group_members(masks_flat, layer: int, kind: str, g: int) -> dict:
    """Boolean index arrays of the entries of group ``g`` per member path (numpy reference)."""
    d = E // H
    out = {}
    if kind == "neuron":
        fc = np.zeros((E, F), bool)
        fc[:, g] = True
        pr = np.zeros((F, E), bool)
        pr[g, :] = True
        out[f"h_{layer}/mlp/c_fc/kernel"] = fc
        out[f"h_{layer}/mlp/c_proj/kernel"] = pr
    else:
        qkv = np.zeros((E, 3 * E), bool)
        for j in range(3):
            qkv[:, j * E + g * d : j * E + (g + 1) * d] = True
        pr = np.zeros((E, E), bool)
        pr[g * d : (g + 1) * d, :] = True
        out[f"h_{layer}/attn/c_attn/kernel"] = qkv
        out[f"h_{layer}/attn/c_proj/kernel"] = pr
    return out


@SETTINGS
@given(
    seed=st.integers(0, 2**31),
    rate=st.floats(0.0, 1.0),
    kind=st.sampled_from(["neuron", "head"]),
    scope=st.sampled_from(["global", "layerwise"]),
)
def test_structured_removes_whole_groups(seed, rate, kind, scope):
    params = gpt2_params(seed)
    masks0 = M.create_masks(params)
    # Pre-prune a few random entries: kept groups must keep exactly these masks.
    rng = np.random.default_rng(seed)
    masks0 = jax.tree_util.tree_map(
        lambda m: None if m is None else jnp.asarray(rng.random(m.shape) > 0.1), masks0, is_leaf=M.is_none
    )
    groups = G.gpt2_neuron_groups(params) if kind == "neuron" else G.gpt2_head_groups(params, H)
    masks = S.prune(params, masks0, rate, pattern=kind, scope=scope, groups=groups)
    before, after = _flat(masks0), _flat(masks)
    absw = {p: np.abs(np.asarray(w)) for p, w in M.leaves_with_paths(params)}
    n_groups = F if kind == "neuron" else H
    pruned_per_layer, scores = [], []
    for layer in range(2):
        count = 0
        for g in range(n_groups):
            members = _group_members(before, layer, kind, g)
            removed = [not after[p][idx].any() for p, idx in members.items()]
            untouched = [np.array_equal(after[p][idx], before[p][idx]) for p, idx in members.items()]
            assert all(removed) or all(untouched)
            count += all(removed)
            scores.append((sum(absw[p][idx & before[p]].sum() for p, idx in members.items()), all(removed)))
        pruned_per_layer.append(count)
        untouched_leaves = {p for p in after if p.startswith(f"h_{layer}/")} - set(members)
        for p in untouched_leaves:
            np.testing.assert_array_equal(after[p], before[p])
    if scope == "global":
        assert sum(pruned_per_layer) == _floor_rate(rate, 2 * n_groups)
        removed_scores = [s for s, r in scores if r]
        kept_scores = [s for s, r in scores if not r]
    else:
        assert pruned_per_layer == [_floor_rate(rate, n_groups)] * 2
        removed_scores = kept_scores = []
    if removed_scores and kept_scores:
        assert max(removed_scores) <= min(kept_scores) * (1 + 1e-5)


def test_structured_neuron_default_groups_and_bias_member():
    params = gpt2_params(3)
    masks = M.create_masks(params, include=[r"/(attn|mlp)/.*/kernel$", r"mlp/c_fc/bias$"])
    new = S.prune(params, masks, 0.5, pattern="neuron", groups=G.gpt2_neuron_groups(params, include_bias=True))
    for i in range(2):
        fc = np.asarray(new[f"h_{i}"]["mlp"]["c_fc"]["kernel"])
        bias = np.asarray(new[f"h_{i}"]["mlp"]["c_fc"]["bias"])
        proj = np.asarray(new[f"h_{i}"]["mlp"]["c_proj"]["kernel"])
        np.testing.assert_array_equal(fc.all(axis=0), bias)
        np.testing.assert_array_equal(proj.all(axis=1), bias)
    with pytest.raises(ValueError, match="members without masks"):
        S.prune(params, M.create_masks(params), 0.5, pattern="neuron", groups=G.gpt2_neuron_groups(params, include_bias=True))
    auto = S.prune(params, M.create_masks(params), 0.5, pattern="neuron")
    ref = S.prune(params, M.create_masks(params), 0.5, pattern="neuron", groups=G.gpt2_neuron_groups(params))
    for a, b in zip(jax.tree_util.tree_leaves(auto), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_array_equal(a, b)


def test_llama_gqa_head_groups_zero_query_heads_of_the_kv_head():
    n_head, n_kv, d, e, f = 4, 2, 2, 8, 6
    rng = np.random.default_rng(0)
    a = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))  # noqa: E731
    params = {
        "h_0": {
            "attn": {
                "q_proj": {"kernel": a(e, n_head * d)},
                "k_proj": {"kernel": a(e, n_kv * d)},
                "v_proj": {"kernel": a(e, n_kv * d)},
                "o_proj": {"kernel": a(n_head * d, e)},
            },
            "mlp": {"gate_proj": {"kernel": a(e, f)}, "up_proj": {"kernel": a(e, f)}, "down_proj": {"kernel": a(f, e)}},
        }
    }
    masks = M.create_masks(params)
    heads = S.prune(params, masks, 0.5, pattern="head", groups=G.llama_head_groups(params, n_head, n_kv))
    at = heads["h_0"]["attn"]
    kv_keep = np.asarray(at["k_proj"]["kernel"]).all(axis=0).reshape(n_kv, d).all(axis=1)
    assert kv_keep.sum() == 1
    np.testing.assert_array_equal(np.asarray(at["v_proj"]["kernel"]).all(axis=0), np.repeat(kv_keep, d))
    q_keep = np.repeat(kv_keep, (n_head // n_kv) * d)
    np.testing.assert_array_equal(np.asarray(at["q_proj"]["kernel"]).all(axis=0), q_keep)
    np.testing.assert_array_equal(np.asarray(at["o_proj"]["kernel"]).all(axis=1), q_keep)
    assert not np.asarray(at["q_proj"]["kernel"])[:, ~q_keep].any()
    neurons = S.prune(params, masks, 0.5, pattern="neuron")["h_0"]["mlp"]
    keep = np.asarray(neurons["up_proj"]["kernel"]).all(axis=0)
    assert keep.sum() == f // 2
    np.testing.assert_array_equal(np.asarray(neurons["gate_proj"]["kernel"]).any(axis=0), keep)
    np.testing.assert_array_equal(np.asarray(neurons["down_proj"]["kernel"]).any(axis=1), keep)


def test_invalid_arguments():
    params = gpt2_params()
    masks = M.create_masks(params)
    with pytest.raises(ValueError):
        S.prune(params, masks, 0.5, scope="blockwise")
    with pytest.raises(ValueError):
        S.prune(params, masks, 0.5, pattern="head")
    with pytest.raises(ValueError):
        S.prune(params, masks, 0.5, pattern="nm", n=2, m=3)


def test_scores_registry():
    from jaxprune.sparsity import scores as SC

    params = gpt2_params(4)
    masks = M.create_masks(params)
    masks["h_0"]["mlp"]["c_fc"]["kernel"] = masks["h_0"]["mlp"]["c_fc"]["kernel"].at[0].set(False)
    mag = SC.compute_scores("magnitude", params, masks)
    assert mag["wte"]["embedding"] is None and mag["h_0"]["mlp"]["c_fc"]["bias"] is None
    s = np.asarray(mag["h_0"]["mlp"]["c_fc"]["kernel"])
    np.testing.assert_array_equal(s[0], -np.inf)
    np.testing.assert_array_equal(s[1:], np.abs(np.asarray(params["h_0"]["mlp"]["c_fc"]["kernel"]))[1:])
    r1 = SC.compute_scores("random", params, masks, rng=jax.random.key(0))
    r2 = SC.SCORES["random"](params, masks, rng=jax.random.key(0))
    a, b = np.asarray(r1["h_1"]["attn"]["c_attn"]["kernel"]), np.asarray(r2["h_1"]["attn"]["c_attn"]["kernel"])
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0.0 and a.max() < 1.0 and len(np.unique(a)) == a.size
    assert not np.array_equal(a, np.asarray(r1["h_0"]["attn"]["c_attn"]["kernel"]))
    with pytest.raises(ValueError):
        SC.compute_scores("random", params, masks)
    with pytest.raises(ValueError):
        SC.compute_scores("wanda", params, masks)


def test_head_groups_by_count_and_by_head_dim_agree():
    params = gpt2_params(0)
    assert G.gpt2_head_groups(params, H) == G.gpt2_head_groups(params, head_dim=E // H)
    assert G.gpt2_head_groups(params, H, include_bias=True) == \
        G.gpt2_head_groups(params, include_bias=True, head_dim=E // H)
    for bad in ({}, {"n_head": H, "head_dim": E // H}):
        with pytest.raises(ValueError, match="exactly one of n_head and head_dim"):
            G.gpt2_head_groups(params, **bad)


_select_each = jax.jit(S.select_smallest_each)
_select_many = jax.jit(S.select_smallest)


@SETTINGS
@given(kind=st.sampled_from(["normal", "three"]), seed=st.integers(0, 2**31), k=st.integers(0, 2 * N_VALUES))
def test_select_smallest_stacks_same_shapes_in_leaf_order(kind, seed, k):
    """Same-shaped arrays share histogram passes; ties still go by (array order, flat index)."""
    x = _values(kind, seed)
    parts = [x[:40].reshape(4, 10), x[40:43], x[43:83].reshape(4, 10), x[83:123].reshape(4, 10), x[123:]]
    sel = _select_many([S.order_keys(jnp.asarray(p)) for p in parts], k)
    got = np.concatenate([np.asarray(s).ravel() for s in sel])
    expected = np.zeros(N_VALUES, bool)
    expected[np.argsort(x, kind="stable")[: min(k, N_VALUES)]] = True
    np.testing.assert_array_equal(got, expected)
    # layer-wise: each array on its own, k_i smallest of array i
    ks = np.random.default_rng(seed).integers(0, 45, len(parts))
    each = _select_each([S.order_keys(jnp.asarray(p)) for p in parts], jnp.asarray(ks, jnp.int32))
    for p, s, ki in zip(parts, each, ks):
        exp = np.zeros(p.size, bool)
        exp[np.argsort(p.ravel(), kind="stable")[: min(ki, p.size)]] = True
        np.testing.assert_array_equal(np.asarray(s).ravel(), exp)


def test_select_smallest_large_input_with_ties():
    assert S.radix_widths(32) == (16, 16) and S.radix_widths(23) == (12, 11) and S.radix_widths(9) == (9,)
    assert S.radix_widths(32, selections=65) == (11, 11, 10)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3000, size=(4, 1 << 20)).astype(np.float32)  # 2**22 + 5000 entries, many ties
    y = rng.normal(size=5000).astype(np.float32)
    k = 1_234_567
    a, b = _select_many([S.order_keys(jnp.asarray(x)), S.order_keys(jnp.asarray(y))], k)
    flat = np.concatenate([x.ravel(), y])
    expected = np.zeros(flat.size, bool)
    expected[np.argsort(flat, kind="stable")[:k]] = True
    np.testing.assert_array_equal(np.concatenate([np.asarray(a).ravel(), np.asarray(b)]), expected)


def test_select_smallest_each_over_many_arrays_uses_narrow_digits():
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 3, size=(5,)).astype(np.float32) for _ in range(70)]  # > 64 selections
    ks = rng.integers(0, 7, len(parts))
    each = _select_each([S.order_keys(jnp.asarray(p)) for p in parts], jnp.asarray(ks, jnp.int32))
    for p, s, ki in zip(parts, each, ks):
        exp = np.zeros(p.size, bool)
        exp[np.argsort(p, kind="stable")[: min(ki, p.size)]] = True
        np.testing.assert_array_equal(np.asarray(s), exp)


def _distinct_fused_computations(hlo: str) -> int:
    """Fused computations of compiled HLO text that differ other than by instruction names."""
    bodies = re.findall(r"^(%(?:fused_computation|wrapped_)[^\n]*\{\n.*?^\})", hlo, re.S | re.M)
    canon = set()
    for body in bodies:
        body = re.sub(r", metadata=\{[^\n]*?\}(?=[,\n])", "", body.split("\n", 1)[1])
        names: dict[str, str] = {}
        canon.add(re.sub(r"%[\w.-]+", lambda m: names.setdefault(m.group(0), f"%{len(names)}"), body))
    return len(canon)


def test_same_shaped_arrays_share_compiled_kernels():
    """Kernels are compiled per shape: more same-shaped arrays (leaves, here of two shapes) add
    none, globally and layer-wise (each per-array cut reaches its kernel as a runtime value)."""
    for fn, k in ((S.select_smallest, jnp.int32(7)), (S.select_smallest_each, None)):
        counts = []
        for n in (2, 6):
            keys = [jax.ShapeDtypeStruct((6, 10), jnp.uint32), jax.ShapeDtypeStruct((10, 3), jnp.uint32)] * n
            kk = jnp.full((2 * n,), 7, jnp.int32) if k is None else k
            counts.append(_distinct_fused_computations(jax.jit(fn).lower(keys, kk).compile().as_text()))
        assert counts[0] == counts[1], (fn.__name__, counts)
