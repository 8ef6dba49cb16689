"""Distillation fine-tuning: the KL loss against a direct numpy computation, zero KL when the student is
the teacher, the teacher never updated, pruned weights exactly zero through KD steps, and the pipeline
with finetune.loss='ce+kd' (pruned stages and controls distil from the frozen dense model)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import experiment, sparsity
from jaxprune.models import Transformer, init_params
from jaxprune.models.presets import ModelConfig
from jaxprune.training.state import create_state
from jaxprune.training.step import (cross_entropy, distillation_kl, hidden_state_mse, make_optimizer,
                                    make_train_step)

CFG = ModelConfig(arch="gpt2", vocab_size=64, max_len=16, n_layer=1, d_model=32, n_head=2, d_ff=64)


def test_kl_equals_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 11)) * 3, rng.normal(size=(2, 3, 11)) * 3
    for temp in (1.0, 2.5):
        def softmax(x):
            e = np.exp(x / temp - (x / temp).max(-1, keepdims=True))
            return e / e.sum(-1, keepdims=True)
        p, q = softmax(t), softmax(s)
        want = (p * (np.log(p) - np.log(q))).sum(-1) * temp ** 2
        got = np.asarray(distillation_kl(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32), temp))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(distillation_kl(jnp.asarray(s), jnp.asarray(s), 2.0)) == pytest.approx(0, abs=1e-6))


def _unit_rms_mse(a, b):
    def unit(h):
        return h / np.sqrt((h * h).mean(-1, keepdims=True) + 1e-6)
    return ((unit(a) - unit(b)) ** 2).mean()


def test_hidden_state_mse_equals_numpy():
    rng = np.random.default_rng(4)
    s, t = rng.normal(size=(2, 3, 8)) * 5, rng.normal(size=(2, 3, 8))
    got = float(hidden_state_mse(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32)))
    assert got == pytest.approx(_unit_rms_mse(s, t), rel=1e-5) and got > 0.5
    # each token's scale does not matter (only its direction), and equal states give 0
    scale = jnp.asarray(rng.uniform(0.5, 20, size=(2, 3, 1)), jnp.float32)
    assert float(hidden_state_mse(jnp.asarray(t, jnp.float32) * scale, jnp.asarray(t, jnp.float32))) < 1e-6
    assert float(hidden_state_mse(-jnp.asarray(t), jnp.asarray(t))) == pytest.approx(4.0, rel=1e-5)


@pytest.fixture(scope="module")
def setup():
    from ml_collections import ConfigDict

    from jaxprune.config import default_config
    model = Transformer(CFG)
    params, _ = init_params(model, jax.random.key(0))
    phase = ConfigDict(default_config().finetune.to_dict())
    phase.lr, phase.warmup_steps, phase.steps = 1e-2, 0, 10
    masks = sparsity.prune(params, sparsity.create_masks(params, sparsity.DEFAULT_INCLUDE), 0.5)
    batch = jnp.asarray(np.random.default_rng(1).integers(0, CFG.vocab_size, size=(4, CFG.max_len + 1)), jnp.int32)
    return model, params, masks, phase, batch


@pytest.mark.parametrize("loss", ["kd", "ce+kd"])
def test_kd_steps_keep_teacher_and_zeros(setup, loss):
    model, params, masks, phase, batch = setup
    tx = make_optimizer(phase)
    step = jax.jit(make_train_step(model.apply, tx, loss=loss, kd_temperature=2.0, kd_alpha=0.3))
    # a different, sharper model as the teacher (a separate copy: the step must not touch it)
    teacher = jax.tree.map(lambda x: jnp.array(x) * 4.0, params)
    before = jax.tree.map(np.asarray, teacher)
    student = sparsity.apply_masks(params, masks)
    state = create_state(student, tx, masks, seed=0)
    state, m0 = step(state, batch, teacher)
    logits_s = model.apply({"params": student}, batch[:, :-1])
    logits_t = model.apply({"params": teacher}, batch[:, :-1])
    kl = float(distillation_kl(logits_s, logits_t, 2.0).mean())
    ce = float(cross_entropy(logits_s, batch[:, 1:]).mean())
    assert kl > 0.05  # the test means something
    assert float(m0["kl"]) == pytest.approx(kl, rel=1e-4) and float(m0["ce"]) == pytest.approx(ce, rel=1e-4)
    assert float(m0["loss"]) == pytest.approx(kl if loss == "kd" else 0.7 * ce + 0.3 * kl, rel=1e-4)
    for _ in range(3):
        state, m = step(state, batch, teacher)
    for a, b in zip(jax.tree.leaves(teacher), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)  # teacher unchanged
    for p, mk in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks, is_leaf=lambda x: x is None)):
        if mk is not None:
            assert np.all(np.asarray(p)[~np.asarray(mk)] == 0.0)  # pruned weights stay exactly zero
    assert float(m["kl"]) < kl  # it does learn the teacher


@pytest.mark.parametrize("loss", ["kd", "ce+kd"])
def test_hidden_state_kd_step(setup, loss):
    """Intermediate-layer distillation adds weight x the block outputs' `hidden_state_mse` to the loss (checked
    against the model's own intermediates in numpy); the teacher is untouched, pruned weights stay 0, and the
    student's block outputs move toward the teacher's."""
    model, params, masks, phase, batch = setup
    tx = make_optimizer(phase)
    step = jax.jit(make_train_step(model.apply, tx, loss=loss, kd_temperature=2.0, kd_alpha=0.3,
                                   hidden_layers=(0,), hidden_weight=0.7))
    teacher = jax.tree.map(lambda x: jnp.array(x) * 4.0, params)
    before = jax.tree.map(np.asarray, teacher)
    student = sparsity.apply_masks(params, masks)
    state = create_state(student, tx, masks, seed=0)
    state, m0 = step(state, batch, teacher)

    def block0(p):
        logits, inter = model.apply({"params": p}, batch[:, :-1], mutable=["intermediates"])
        return np.asarray(logits), np.asarray(inter["intermediates"]["out_0"][0], np.float64)
    (ls, hs), (lt, ht) = block0(student), block0(teacher)
    mse, kl = _unit_rms_mse(hs, ht), float(distillation_kl(jnp.asarray(ls), jnp.asarray(lt), 2.0).mean())
    ce = float(cross_entropy(jnp.asarray(ls), batch[:, 1:]).mean())
    assert mse > 0.01  # the test means something
    assert float(m0["hidden_mse"]) == pytest.approx(mse, rel=1e-4)
    base = kl if loss == "kd" else 0.7 * ce + 0.3 * kl
    assert float(m0["loss"]) == pytest.approx(base + 0.7 * mse, rel=1e-4)
    for _ in range(3):
        state, m = step(state, batch, teacher)
    for a, b in zip(jax.tree.leaves(teacher), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)
    for p, mk in zip(jax.tree.leaves(state.params), jax.tree.leaves(masks, is_leaf=lambda x: x is None)):
        if mk is not None:
            assert np.all(np.asarray(p)[~np.asarray(mk)] == 0.0)
    assert float(m["hidden_mse"]) < float(m0["hidden_mse"])
    with pytest.raises(ValueError, match="needs a teacher"):
        make_train_step(model.apply, tx, loss="ce", hidden_layers=(0,), hidden_weight=1.0)


def test_student_equal_to_teacher_has_zero_kl(setup):
    model, params, _, phase, batch = setup
    tx = make_optimizer(phase)
    step = jax.jit(make_train_step(model.apply, tx, loss="kd"))
    state = create_state(jax.tree.map(jnp.array, params), tx, None, seed=0)
    state, m = step(state, batch, params)
    assert abs(float(m["kl"])) <= 1e-6 and float(m["grad_norm"]) <= 1e-6
    # ... but not exactly 0 (the student's and the teacher's forward passes round differently in one
    # program), and Adam normalises that float noise into lr-sized updates: a dense model distilled from
    # its own frozen copy drifts at random. That is why the SmolLM2 kd arms train no such control.
    drift = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)))
    if float(m["grad_norm"]) > 0:  # measured at lr 5e-5: a grad norm of 5.5e-8 moved params by 0.44 lr in one step
        assert drift > 0.1 * phase.lr


def test_kd_without_a_teacher_is_refused(setup):
    model, params, _, phase, batch = setup
    tx = make_optimizer(phase)
    with pytest.raises(ValueError, match="needs the teacher's params"):
        make_train_step(model.apply, tx, loss="kd")(create_state(params, tx, None, seed=0), batch)
    with pytest.raises(ValueError, match="loss must be"):
        make_train_step(model.apply, tx, loss="mse")


def test_pipeline_distils_pruned_stages_and_controls(make_config, tmp_path):
    config = make_config(**{"finetune.loss": "ce+kd", "pruning.rates": (0.5,), "finetune.steps": 4,
                            "finetune.kd_hidden_layers": (0,)})
    rows = experiment.run(config, tmp_path, progress=False)
    assert [r["stage"] for r in rows] == ["dense", "prune_1", "control_1"]
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for stage in ("prune_1", "control_1"):
        ours = [x for x in lines if x.get("phase", x.get("stage")) == stage and "kl" in x and "hidden_mse" in x]
        assert ours, f"{stage} logged no KL or hidden-state MSE"
    dense = [x for x in lines if x.get("phase", x.get("stage")) == "dense"]
    assert dense and all("kl" not in x for x in dense)  # pretraining is plain cross-entropy
    # the default (ce) config keeps its digest: adding the KD keys did not orphan earlier runs
    assert experiment.config_digest(make_config()) != experiment.config_digest(config)
    # logit-only KD runs keep theirs too (the hidden-state keys leave the digest when no block is matched)
    logit_only = make_config(**{"finetune.loss": "kd"})
    assert experiment.config_digest(logit_only) == experiment.config_digest(
        make_config(**{"finetune.loss": "kd", "finetune.kd_hidden_weight": 3.0}))
    assert experiment.config_digest(logit_only) != experiment.config_digest(
        make_config(**{"finetune.loss": "kd", "finetune.kd_hidden_layers": (0,)}))


def test_hidden_layers_are_checked_before_any_compute(make_config, tmp_path):
    from jaxprune.config import ConfigError, validate
    with pytest.raises(ConfigError, match="needs a teacher"):
        validate(make_config(**{"finetune.kd_hidden_layers": (0,)}))
    with pytest.raises(ConfigError, match="distinct non-negative"):
        validate(make_config(**{"finetune.loss": "kd", "finetune.kd_hidden_layers": (0, 0)}))
    with pytest.raises(ConfigError, match=r"kd_hidden_layers \[99\] do not exist"):
        experiment.run(make_config(**{"finetune.loss": "kd", "finetune.kd_hidden_layers": (0, 99)}), tmp_path / "w",
                       progress=False)
    assert not (tmp_path / "w").exists()  # no workdir claimed


@pytest.mark.parametrize("loss,chunk,hidden", [("ce", 5, ()), ("ce+kd", 4, ()), ("kd", 16, ()), ("ce+kd", 5, (0,))])
def test_chunked_loss_step_equals_full_logits_step(setup, loss, chunk, hidden):
    """The chunked LM-head loss (5 does not divide T = 16: padded positions carry no weight) gives the same
    loss, metrics and gradients (one plain SGD step at lr 1) as the step that materialises all (B, T, V) logits."""
    import optax

    from jaxprune.models.transformer import head_logits
    from jaxprune.sparsity.transform import masked_update
    model, params, masks, phase, batch = setup
    tx = masked_update(optax.sgd(1.0))
    teacher = jax.tree.map(lambda x: jnp.array(x) * 2.0, params)
    student = sparsity.apply_masks(params, masks)
    head = lambda p, x: head_logits(CFG, p, x)  # noqa: E731
    outs = []
    for c in (0, chunk):
        step = jax.jit(make_train_step(model.apply, tx, loss=loss, kd_temperature=2.0, kd_alpha=0.3, head=head,
                                       loss_chunk=c, hidden_layers=hidden))
        state = create_state(jax.tree.map(jnp.array, student), tx, masks, seed=0)
        state, m = step(state, batch, teacher) if loss != "ce" else step(state, batch)
        outs.append((state, m))
    (s0, m0), (s1, m1) = outs
    assert set(m0) == set(m1)
    for k in m0:
        assert float(m1[k]) == pytest.approx(float(m0[k]), rel=2e-5), k
    for a, b in zip(jax.tree.leaves(s0.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=2e-7)
    for p, mk in zip(jax.tree.leaves(s1.params), jax.tree.leaves(masks, is_leaf=lambda x: x is None)):
        if mk is not None:
            assert np.all(np.asarray(p)[~np.asarray(mk)] == 0.0)


def test_head_logits_match_the_model():
    """`head_logits` on the hidden states reproduces the model's logits, tied (GPT-2) and untied (LLaMA)."""
    from jaxprune.models.transformer import head_logits
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, 64, size=(2, 16)), jnp.int32)
    for cfg in (CFG, ModelConfig(arch="llama", vocab_size=64, max_len=16, n_layer=1, d_model=32, n_head=4,
                                 n_kv_head=2, d_ff=64, tie_embeddings=False)):
        model = Transformer(cfg)
        params, _ = init_params(model, jax.random.key(3))
        want = model.apply({"params": params}, tokens)
        got = head_logits(cfg, params, model.apply({"params": params}, tokens, hidden=True))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-6)
