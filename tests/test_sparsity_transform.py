"""Tests for the optax wrappers in jaxprune.sparsity.transform."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxprune.sparsity import masks as M
from jaxprune.sparsity import select as S
from jaxprune.sparsity import transform as T
from test_sparsity_masks import gpt2_params


def _loss(params, x):
    # Touches every leaf so that every gradient entry is nonzero.
    leaves = jax.tree_util.tree_leaves(params)
    return sum(jnp.sum(jnp.sin(w * x) + (w - 0.5) ** 2) for w in leaves)


def _train(tx, params, masks, steps=50):
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, masks):
        grads = jax.grad(_loss)(params, 1.3)
        updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
        return M.apply_masks(optax.apply_updates(params, updates), masks), opt_state

    for _ in range(steps):
        params, opt_state = step(params, opt_state, masks)
    return params, opt_state


def _adam_state(opt_state):
    return next(s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState))


def test_adamw_keeps_pruned_weights_and_moments_at_zero():
    params0 = gpt2_params(0)
    masks = S.prune(params0, M.create_masks(params0), 0.5)
    params = M.apply_masks(params0, masks)
    tx = T.masked_update(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=0.1)))
    params, opt_state = _train(tx, params, masks)
    adam = _adam_state(opt_state)
    flat_p = dict(M.leaves_with_paths(params))
    flat_0 = dict(M.leaves_with_paths(params0))
    mu, nu = dict(M.leaves_with_paths(adam.mu)), dict(M.leaves_with_paths(adam.nu))
    for path, m in M.leaves_with_paths(masks, keep_none=True):
        w = np.asarray(flat_p[path])
        if m is None:
            assert np.all(w != np.asarray(flat_0[path])), path
            continue
        m = np.asarray(m)
        assert (~m).sum() > 0
        assert np.all(w[~m] == 0.0), path
        assert np.all(w[m] != np.asarray(flat_0[path])[m]), path
        assert np.all(np.asarray(mu[path])[~m] == 0.0) and np.all(np.asarray(nu[path])[~m] == 0.0)
        assert np.all(np.asarray(nu[path])[m] > 0.0)


def test_unmasked_adamw_would_regrow_pruned_weights():
    # Guards the test above: without the wrapper, decay and moments move pruned weights.
    params0 = gpt2_params(0)
    masks = S.prune(params0, M.create_masks(params0), 0.5)
    tx = optax.with_extra_args_support(optax.adamw(1e-2, weight_decay=0.1))
    params, _ = _train(tx, M.apply_masks(params0, masks), None, steps=2)
    w = np.asarray(params["h_0"]["mlp"]["c_fc"]["kernel"])
    assert np.any(w[~np.asarray(masks["h_0"]["mlp"]["c_fc"]["kernel"])] != 0.0)


def test_dense_masks_none_matches_inner_optimizer_exactly():
    params = gpt2_params(1)
    inner = optax.adamw(1e-2, weight_decay=0.1)
    a, _ = _train(T.masked_update(inner), params, None, steps=3)
    b, _ = _train(optax.with_extra_args_support(inner), params, None, steps=3)
    c, _ = _train(T.masked_update(inner), params, M.create_masks(params), steps=3)
    for x, y, z in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), jax.tree_util.tree_leaves(c)):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)


def test_mask_optimizer_state_and_masked_apply_updates():
    params = gpt2_params(2)
    tx = T.masked_update(optax.adamw(1e-2, weight_decay=0.1))
    params, opt_state = _train(tx, params, None, steps=2)
    masks = S.prune(params, M.create_masks(params), 0.3)
    adam = _adam_state(T.mask_optimizer_state(opt_state, masks))
    before = _adam_state(opt_state)
    for path, m in M.leaves_with_paths(masks, keep_none=True):
        mu, mu0 = dict(M.leaves_with_paths(adam.mu))[path], dict(M.leaves_with_paths(before.mu))[path]
        if m is None:
            np.testing.assert_array_equal(mu, mu0)
        else:
            np.testing.assert_array_equal(np.asarray(mu), np.where(np.asarray(m), mu0, 0.0))
    assert int(adam.count) == 2
    updates = jax.tree_util.tree_map(jnp.ones_like, params)
    out = T.masked_apply_updates(params, updates, masks)
    k = np.asarray(out["h_1"]["attn"]["c_proj"]["kernel"])
    mk = np.asarray(masks["h_1"]["attn"]["c_proj"]["kernel"])
    assert np.all(k[~mk] == 0.0)
    np.testing.assert_array_equal(k[mk], np.asarray(params["h_1"]["attn"]["c_proj"]["kernel"])[mk] + 1.0)
