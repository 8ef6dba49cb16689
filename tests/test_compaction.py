"""Structured pruning + compaction: smaller dense models whose logits equal the masked model's."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import sparsity
from jaxprune.config import default_config
from jaxprune.models import build_model, init_params, param_count
from jaxprune.models.compact import compact_model, prune_structured
from jaxprune.models.presets import ModelConfig
from jaxprune.sparsity.compact import group_keep
from jaxprune.training.checkpoint import Checkpointer, abstract_like
from jaxprune.training.state import create_state
from jaxprune.training.step import make_optimizer, make_train_step

E, H, D, F, L = 32, 4, 8, 64, 2
CFG = ModelConfig(vocab_size=64, max_len=16, n_layer=L, d_model=E, n_head=H, d_ff=F)
TOKENS = jax.random.randint(jax.random.key(9), (2, 16), 0, 64)


def _n(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def params():
    """Random params with every bias, norm scale and norm bias non-zero."""
    p, _ = init_params(build_model(CFG), jax.random.key(0))
    leaves, treedef = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape) if x.ndim == 1 else x for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, leaves)


def _masks_from_keeps(params, neuron_keep, head_keep, sides=("in", "out")):
    """Masks pruning whole groups (kept = True); `sides` picks which kernels are masked."""
    masks = sparsity.create_masks(params)
    specs = list(sparsity.gpt2_neuron_groups(params)) + list(sparsity.gpt2_head_groups(params, head_dim=D))
    keeps = [jnp.asarray(k) for k in list(neuron_keep) + list(head_keep)]
    for spec, keep in zip(specs, keeps):
        mems = [spec.members[0]] * ("in" in sides) + [spec.members[-1]] * ("out" in sides)
        for mem in mems:
            blk, rest = mem.path.split("/", 1)
            a, b, c = rest.split("/")
            leaf = masks[blk][a][b][c]
            masks[blk][a][b][c] = leaf & sparsity.groups.expand_group_keep(keep, mem, leaf.shape)
    return masks


def _check_equal(params, masks, neurons=True, heads=True):
    cfg2, new = compact_model(CFG, params, masks, neurons=neurons, heads=heads)
    want = build_model(CFG).apply({"params": sparsity.apply_masks(params, masks)}, TOKENS)
    got = build_model(cfg2).apply({"params": new}, TOKENS)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=1e-5)
    assert _n(new) == param_count(cfg2)
    return cfg2, new


ALL_F, ALL_H = np.ones(F, bool), np.ones(H, bool)
RNG = np.random.default_rng(0)
UNEVEN_F = [RNG.permutation(F) < 48, RNG.permutation(F) < 16]  # non-uniform: 48 and 16 neurons kept
UNEVEN_H = [np.array([1, 0, 1, 1], bool), np.array([0, 0, 1, 0], bool)]  # 3 and 1 heads kept


@pytest.mark.parametrize("kind", ["neurons", "heads", "both"])
@pytest.mark.parametrize("sides", [("in", "out"), ("in",)])
def test_nonuniform_compaction_equals_masked_model(params, kind, sides):
    nk = UNEVEN_F if kind != "heads" else [ALL_F, ALL_F]
    hk = UNEVEN_H if kind != "neurons" else [ALL_H, ALL_H]
    masks = _masks_from_keeps(params, nk, hk, sides)  # sides=("in",): biases fold into c_proj's bias
    cfg2, new = _check_equal(params, masks)
    want_ff = (48, 16) if kind != "heads" else (F, F)
    want_h = (3, 1) if kind != "neurons" else (H, H)
    assert (cfg2.layer_d_ff, cfg2.layer_n_head) == (want_ff, want_h)
    removed_f = 2 * F - sum(want_ff)
    removed_h = 2 * H - sum(want_h)
    assert param_count(CFG) - param_count(cfg2) == removed_f * (2 * E + 1) + removed_h * (4 * E * D + 3 * D)
    assert new["h_1"]["attn"]["c_attn"]["kernel"].shape == (E, 3 * want_h[1] * D)
    assert new["h_0"]["mlp"]["c_proj"]["kernel"].shape == (want_ff[0], E)


def test_fold_changes_bias_only_when_input_side_pruned(params):
    both = _masks_from_keeps(params, UNEVEN_F, UNEVEN_H)
    ins = _masks_from_keeps(params, UNEVEN_F, UNEVEN_H, sides=("in",))
    _, a = compact_model(CFG, params, both)
    _, b = compact_model(CFG, params, ins)
    np.testing.assert_array_equal(a["h_0"]["mlp"]["c_proj"]["bias"], params["h_0"]["mlp"]["c_proj"]["bias"])
    assert not np.allclose(b["h_0"]["mlp"]["c_proj"]["bias"], params["h_0"]["mlp"]["c_proj"]["bias"])
    assert not np.allclose(b["h_0"]["attn"]["c_proj"]["bias"], params["h_0"]["attn"]["c_proj"]["bias"])


@pytest.mark.parametrize("scope", ["layerwise", "global"])
def test_prune_structured_then_compact(params, scope):
    masks = prune_structured(CFG, params, sparsity.create_masks(params), 0.5, scope=scope)
    cfg2, new = _check_equal(params, masks)
    assert sum(cfg2.layer_d_ff) == F and sum(cfg2.layer_n_head) == H  # half of 2 layers' groups
    if scope == "layerwise":
        assert cfg2.layer_d_ff == (F // 2, F // 2) and cfg2.layer_n_head == (H // 2, H // 2)
    # compacting again finds nothing left to remove
    cfg3, again = compact_model(cfg2, new, sparsity.create_masks(new))
    assert cfg3 == cfg2 and jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.all(x == y)), again, new))


def test_zero_heads_in_a_block(params):
    masks = _masks_from_keeps(params, UNEVEN_F, [np.zeros(H, bool), UNEVEN_H[1]])
    cfg2, _ = _check_equal(params, masks)
    assert cfg2.layer_n_head == (0, 1)


def test_unpruned_model_compacts_to_itself(params):
    cfg2, new = compact_model(CFG, params, sparsity.create_masks(params))
    assert cfg2.layer_d_ff == (F, F) and cfg2.layer_n_head == (H, H) and param_count(cfg2) == param_count(CFG)
    assert group_keep(sparsity.create_masks(params), sparsity.gpt2_neuron_groups(params)[0]).all()


def test_compacted_checkpoint_round_trip_and_train_step(params, tmp_path):
    cfg2, new = compact_model(CFG, params, _masks_from_keeps(params, UNEVEN_F, UNEVEN_H))
    # a config rebuilt from JSON (lists) gives the same model
    cfg_json = ModelConfig(**{k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg2).items()})
    assert cfg_json == cfg2
    model = build_model(cfg_json)
    tx = make_optimizer(default_config().finetune)
    state = create_state(new, tx, None, 0)
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(0, state, {"model": dataclasses.asdict(cfg2)})
    restored, meta = ckpt.restore(0, abstract_like(state))
    assert tuple(meta["model"]["layer_n_head"]) == (3, 1)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    batch = jax.random.randint(jax.random.key(3), (4, 17), 0, 64)
    state2, metrics = jax.jit(make_train_step(model.apply, tx, 1))(restored, batch)
    assert np.isfinite(float(metrics["loss"])) and int(state2.step) == 1
    assert jax.tree.structure(state2.params) == jax.tree.structure(new)
