"""SparseGPT's fast paths give the plain algorithm's results: the sub-blocked column loop and the
one-Cholesky inverse factor against a float64 NumPy transcription, layers sharing one Hessian
(q/k/v, gate/up) pruned together against one by one, and block-by-block calibration with groups."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import sparsity
from jaxprune.models import build_model, capture, init_params, model_config_from_preset
from jaxprune.sparsity.sparsegpt import sparsegpt_prune_layers

N_TOK = 256


def _reference(w, xtx, n_tok, k, pattern, blocksize, n=2, m=4, damp=0.01):
    """SparseGPT on a dense mask in float64, input by input (no sub-blocks), as the module docstring
    states it: block targets floor(k * end / in) in float32, ties to the lowest position."""
    w = w.astype(np.float64).copy()
    h = 2.0 * xtx.astype(np.float64) / n_tok
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper, H^-1 = U^T U
    cols = w.shape[0]
    keep = np.ones(w.shape, bool)
    pruned = 0
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, u1 = w[i1:i2].copy(), u[i1:i2, i1:i2]
        d = np.diag(u1)
        keep1 = np.ones(w1.shape, bool)
        if pattern == "unstructured":
            frac = np.float32(np.float32(i2) / np.float32(cols))
            target = k if i2 == cols else min(int(np.floor(np.float32(k) * frac)), k)
            sal = (w1 ** 2 / d[:, None] ** 2).ravel()
            take = max(target - pruned, 0)
            keep1.ravel()[np.lexsort((np.arange(sal.size), sal))[:take]] = False
            pruned += take
        err = np.zeros_like(w1)
        for i in range(i2 - i1):
            if pattern == "nm" and i % m == 0:
                sal = w1[i:i + m] ** 2 / d[i:i + m, None] ** 2
                low = np.argsort(sal, axis=0, kind="stable")[: m - n]  # (m - n, out)
                np.put_along_axis(keep1[i:i + m], low, False, axis=0)
            q = np.where(keep1[i], w1[i], 0.0)
            err[i] = (w1[i] - q) / d[i]
            w1[i:] -= np.outer(u1[i, i:], err[i])
            w1[i] = q
        w[i1:i2], keep[i1:i2] = np.where(keep1, w1, 0.0), keep1
        w[i2:] -= u[i1:i2, i2:].T @ err
    return w, keep


@pytest.fixture(scope="module")
def shared_input():
    """Three kernels (in, out_i) fed the same correlated inputs with uneven feature scales."""
    rng = np.random.default_rng(0)
    d_in = 104  # blocks of 32: three full ones (two sub-blocks each) and a short last one
    a = rng.normal(size=(d_in, d_in)) / np.sqrt(d_in)
    x = (rng.normal(size=(N_TOK, d_in)) @ a.T * rng.uniform(0.2, 3.0, size=d_in)).astype(np.float32)
    kernels = [rng.normal(size=(d_in, o)).astype(np.float32) for o in (40, 24, 8)]
    return kernels, (x.T @ x).astype(np.float32)


@pytest.mark.parametrize("pattern", ["unstructured", "nm"])
def test_grouped_layers_equal_reference_and_one_by_one(shared_input, pattern):
    kernels, xtx = shared_input
    ks = [w.size // 2 for w in kernels]
    masks = [jnp.ones(w.shape, bool) for w in kernels]
    together = sparsegpt_prune_layers([jnp.asarray(w) for w in kernels], masks, jnp.asarray(xtx), N_TOK, ks,
                                      pattern=pattern, blocksize=32)
    for w, k, (kern, mask) in zip(kernels, ks, together):
        ref_w, ref_keep = _reference(w, xtx, N_TOK, k, pattern, 32)
        np.testing.assert_array_equal(np.asarray(mask), ref_keep)
        np.testing.assert_allclose(np.asarray(kern), ref_w, rtol=0, atol=2e-5 * np.abs(ref_w).max())
        alone = sparsity.sparsegpt_prune_layer(jnp.asarray(w), jnp.ones(w.shape, bool), jnp.asarray(xtx), N_TOK, k,
                                               pattern=pattern, blocksize=32)
        np.testing.assert_array_equal(np.asarray(alone[1]), np.asarray(mask))
        np.testing.assert_allclose(np.asarray(alone[0]), np.asarray(kern), rtol=0, atol=1e-6 * np.abs(ref_w).max())
        assert int(np.sum(~np.asarray(mask))) == w.size // 2


def test_grouped_layers_keep_prior_masks_and_dead_inputs(shared_input):
    kernels, xtx = shared_input
    xtx = xtx.copy()
    xtx[5, :] = xtx[:, 5] = 0.0  # an input that never fires
    prior = [np.ones(w.shape, bool) for w in kernels]
    prior[1][7, :3] = False
    ks = [w.size // 2 for w in kernels]
    out = sparsegpt_prune_layers([jnp.asarray(w) for w in kernels], [jnp.asarray(p) for p in prior],
                                 jnp.asarray(xtx), N_TOK, ks, blocksize=32)
    for (kern, mask), p, k in zip(out, prior, ks):
        kern, mask = np.asarray(kern), np.asarray(mask)
        assert np.all(kern[5] == 0) and not np.any(mask & ~p)
        assert (~mask).sum() == k and np.all(kern[~mask] == 0)


def test_input_groups():
    assert capture.input_groups(model_config_from_preset("llama-pico"), 0) == (
        ("attn/q_proj", "attn/k_proj", "attn/v_proj"), ("attn/o_proj",), ("mlp/gate_proj", "mlp/up_proj"),
        ("mlp/down_proj",))
    assert capture.input_groups(model_config_from_preset("femto"), 0) == (
        ("attn/c_attn",), ("attn/c_proj",), ("mlp/c_fc",), ("mlp/c_proj",))


@pytest.mark.parametrize("pattern", ["unstructured", "nm"])
def test_calibration_with_groups_equals_layer_by_layer(pattern):
    cfg = model_config_from_preset("llama-pico")
    params, _ = init_params(build_model(cfg), jax.random.key(0))
    masks = sparsity.create_masks(params)
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (4, 32), 0, cfg.vocab_size))
    layer = sparsity.layer_pruner("sparsegpt", 0.5, pattern=pattern)
    assert hasattr(layer, "group")
    p1, m1 = capture.calibrate_and_prune(cfg, params, masks, tokens, layer, batch_size=2)
    p2, m2 = capture.calibrate_and_prune(cfg, params, masks, tokens, lambda *a: layer(*a), batch_size=2)
    for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    assert sparsity.overall_sparsity(m1) == 0.5


@pytest.mark.parametrize("d, panel", [(20, 32), (50, 32), (100, 32), (96, 16)])
def test_gram_by_upper_panels_equals_full_product(d, panel):
    x = np.random.default_rng(d).normal(size=(64, d)).astype(np.float32)
    got = np.asarray(capture.gram(jnp.asarray(x), panel))
    np.testing.assert_allclose(got, x.astype(np.float64).T @ x, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(got, got.T)
