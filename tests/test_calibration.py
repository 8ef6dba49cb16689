"""Calibration-aware pruning: Wanda (Sun et al. 2023), SparseGPT (Frantar & Alistarh 2023)
and the block-by-block capture of linear-layer inputs."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import sparsity
from jaxprune.config import ConfigError, validate
from jaxprune.models import build_model, init_params, model_config_from_preset
from jaxprune.models import capture

D_IN, D_OUT, N_TOK = 64, 24, 512


@pytest.fixture(scope="module")
def layer():
    """A kernel (in, out) and correlated inputs X = Z A^T with uneven feature scales."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(D_IN, D_IN)) / np.sqrt(D_IN)
    x = (rng.normal(size=(N_TOK, D_IN)) @ a.T * rng.uniform(0.2, 3.0, size=D_IN)).astype(np.float32)
    w = rng.normal(size=(D_IN, D_OUT)).astype(np.float32)
    return w, x


def _rel_err(w, x, w_hat):
    return float(np.linalg.norm(x @ w - x @ np.asarray(w_hat)) / np.linalg.norm(x @ w))


def _prune_all(w, x, pattern):
    mask = jnp.ones(w.shape, bool)
    xtx = jnp.asarray(x.T @ x)
    out = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        out[method] = sparsity.layer_pruner(method, 0.5, pattern=pattern, blocksize=16)(
            "k", jnp.asarray(w), mask, xtx, N_TOK)
    return out


@pytest.mark.parametrize("pattern", ["unstructured", "nm"])
def test_sparsegpt_reconstructs_best(layer, pattern):
    w, x = layer
    res = _prune_all(w, x, pattern)
    err = {k: _rel_err(w, x, kern) for k, (kern, _) in res.items()}
    assert err["sparsegpt"] < err["wanda"] < err["magnitude"], err
    for kern, mask in res.values():
        assert int(jnp.sum(~mask)) == D_IN * D_OUT // 2
        assert bool(jnp.all(jnp.where(mask, True, kern == 0)))
    if pattern == "nm":  # 2 of every 4 consecutive inputs kept, in every output
        for _, mask in res.values():
            assert np.all(np.asarray(mask).reshape(D_IN // 4, 4, D_OUT).sum(1) == 2)


def test_wanda_matches_numpy_and_counts_per_output(layer):
    w, x = layer
    norms = np.sqrt((x.astype(np.float64) ** 2).sum(0))
    score = np.abs(w) * norms[:, None]
    k = int(0.3 * D_IN)  # 19
    expected = np.ones_like(w, bool)
    for o in range(D_OUT):
        expected[np.argsort(score[:, o], kind="stable")[:k], o] = False
    got = sparsity.wanda_prune_layer(jnp.asarray(w), jnp.ones(w.shape, bool), jnp.asarray((x ** 2).sum(0)),
                                     rate=0.3)
    np.testing.assert_array_equal(np.asarray(got), expected)
    assert np.all((~np.asarray(got)).sum(0) == k)
    # monotone: an already pruned entry stays pruned and counts towards the k of its output
    prior = np.ones_like(w, bool)
    prior[0, :] = False
    again = np.asarray(sparsity.wanda_prune_layer(jnp.asarray(w), jnp.asarray(prior),
                                                  jnp.asarray((x ** 2).sum(0)), rate=0.3))
    assert not again[0].any() and np.all((~again).sum(0) == k)


def test_wanda_registry_score(layer):
    w, x = layer
    params, masks = {"k": jnp.asarray(w)}, {"k": jnp.ones(w.shape, bool)}
    s = sparsity.compute_scores("wanda", params, masks, activations={"k": jnp.asarray((x ** 2).sum(0))})
    np.testing.assert_allclose(np.asarray(s["k"]), np.abs(w) * np.sqrt((x ** 2).sum(0))[:, None], rtol=1e-5)


def test_sparsegpt_dead_inputs_and_prior_mask(layer):
    w, x = layer
    x = x.copy()
    x[:, 5] = 0.0  # an input that never fires
    prior = np.ones_like(w, bool)
    prior[7, :3] = False
    k = int(0.5 * w.size)
    kern, mask = sparsity.sparsegpt_prune_layer(jnp.asarray(w), jnp.asarray(prior), jnp.asarray(x.T @ x), N_TOK, k,
                                                blocksize=16)
    kern, mask = np.asarray(kern), np.asarray(mask)
    assert np.isfinite(kern).all()
    assert np.all(kern[5] == 0)  # dead input: weights zeroed
    assert not mask[7, :3].any()  # monotone
    assert (~mask).sum() == k and np.all(kern[~mask] == 0)


@pytest.fixture(scope="module")
def femto():
    cfg = model_config_from_preset("femto")
    params, _ = init_params(build_model(cfg), jax.random.key(0))
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (5, 16), 0, cfg.vocab_size))
    return cfg, params, tokens


def test_block_capture_matches_full_model_capture(femto):
    cfg, params, tokens = femto
    full = capture.model_stats(cfg, params, jnp.asarray(tokens))
    got = {}
    capture.calibrate_and_prune(cfg, params, {}, tokens, None, batch_size=2,
                                on_block=lambda i, st: got.update({f"h_{i}/{k}": v for k, v in st.items()}))
    assert sorted(got) == sorted(full) == sorted(f"h_{i}/{m}" for i in range(cfg.n_layer) for m in (
        "attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"))
    for k in full:
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(full[k]), rtol=1e-4, atol=1e-3)


def test_sequential_calibration_sees_pruned_blocks(femto):
    """Block 1's statistics come from the pruned block 0, block 0's from the dense model."""
    cfg, params, tokens = femto
    masks = sparsity.create_masks(params)
    dense = {}
    capture.calibrate_and_prune(cfg, params, masks, tokens, None,
                                on_block=lambda i, st: dense.update({i: st["attn/c_attn"]}))
    seen = {}
    new_p, new_m = capture.calibrate_and_prune(cfg, params, masks, tokens, sparsity.layer_pruner("sparsegpt", 0.5),
                                               on_block=lambda i, st: seen.update({i: st["attn/c_attn"]}))
    np.testing.assert_allclose(np.asarray(seen[0]), np.asarray(dense[0]), rtol=1e-5)
    assert not np.allclose(np.asarray(seen[1]), np.asarray(dense[1]), rtol=1e-3)
    assert sparsity.overall_sparsity(new_m) == 0.5
    for path, m in sparsity.masks.leaves_with_paths(new_m):
        assert float(1 - np.mean(np.asarray(m))) == 0.5, path


def test_config_validation(make_config):
    validate(make_config(**{"pruning.method": "sparsegpt", "pruning.pattern": "nm", "pruning.rates": (0.5,)}))
    with pytest.raises(ConfigError, match="supports pattern"):
        validate(make_config(**{"pruning.method": "wanda", "pruning.pattern": "neuron"}))
    with pytest.raises(ConfigError, match="calibration_samples"):
        validate(make_config(**{"pruning.method": "wanda", "pruning.calibration_samples": 0}))


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_experiment_one_shot(make_config, tmp_path, method):
    from jaxprune.experiment import Experiment

    c = make_config(**{"pruning.method": method, "pruning.rates": (0.5,), "pruning.calibration_samples": 8,
                       "pruning.calibration_batch": 4, "pretrain.steps": 5, "finetune.steps": 2,
                       "finetune.control": False, "eval.heldout_batches": 1})
    rows = Experiment(c, tmp_path / method, progress=False).run()
    row = next(r for r in rows if r["stage"] == "prune_1")
    assert row["sparsity"] == 0.5
    assert all(v == 0.5 for v in row["layer_sparsity"].values())
    assert np.isfinite(row["metrics"]["heldout_loss"])
    json.dumps(row)


def test_wanda_collects_input_norms_only_and_matches_xtx_diagonal(femto):
    """layer_pruner names its statistic; Wanda's per-input norms equal diag(X^T X), so its masks do too."""
    cfg, params, tokens = femto
    assert sparsity.layer_pruner("wanda").statistic == "sq_norm"
    assert sparsity.layer_pruner("sparsegpt").statistic == "xtx"
    xtx, sq = {}, {}
    capture.calibrate_and_prune(cfg, params, {}, tokens, None, batch_size=2,
                                on_block=lambda i, st: xtx.update({(i, k): v for k, v in st.items()}))
    capture.calibrate_and_prune(cfg, params, {}, tokens, None, batch_size=2, statistic="sq_norm",
                                on_block=lambda i, st: sq.update({(i, k): v for k, v in st.items()}))
    assert sorted(xtx) == sorted(sq)
    for key in xtx:
        np.testing.assert_allclose(np.asarray(sq[key]), np.diag(np.asarray(xtx[key])), rtol=1e-4, atol=1e-4)
    masks = sparsity.create_masks(params)
    layer = sparsity.layer_pruner("wanda", 0.5)
    _, by_norms = capture.calibrate_and_prune(cfg, params, masks, tokens, layer, batch_size=2)
    _, by_xtx = capture.calibrate_and_prune(cfg, params, masks, tokens, layer, batch_size=2, statistic="xtx")
    for a, b in zip(jax.tree.leaves(by_norms), jax.tree.leaves(by_xtx)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
