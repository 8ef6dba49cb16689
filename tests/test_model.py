"""The Transformer: parameter counts, causality, names, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.models import build_model, init_params, logical_axes, model_config_from_preset, param_count


@pytest.fixture(scope="module")
def femto():
    model = build_model(model_config_from_preset("femto"))
    params, _ = init_params(model, jax.random.key(0))
    return model, params


@pytest.mark.parametrize("preset", ["femto", "llama-pico"])
def test_param_count_matches_formula(preset):
    cfg = model_config_from_preset(preset)
    shapes = jax.eval_shape(lambda: init_params(build_model(cfg), jax.random.key(0))[0])
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == param_count(cfg)


def test_gpt2_124m_has_124m_parameters():
    assert param_count(model_config_from_preset("gpt2")) == 124_439_808  # the HF gpt2 checkpoint's count


def test_gpt2_parameter_names(femto):
    _, params = femto
    assert set(params) == {"wte", "wpe", "h_0", "h_1", "ln_f"}
    assert params["h_0"]["attn"]["c_attn"]["kernel"].shape == (64, 192)
    assert params["h_0"]["mlp"]["c_proj"]["kernel"].shape == (256, 64)


def test_logical_axes_cover_every_parameter(femto):
    model, params = femto
    axes = logical_axes(model)
    assert jax.tree.structure(params) == jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    assert tuple(axes["h_0"]["mlp"]["c_fc"]["kernel"]) == ("embed", "mlp")


def test_causal_future_tokens_do_not_change_past_logits(femto):
    model, params = femto
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 512)
    changed = tokens.at[:, 10:].set((tokens[:, 10:] + 7) % 512)
    a = model.apply({"params": params}, tokens)
    b = model.apply({"params": params}, changed)
    np.testing.assert_array_equal(np.asarray(a[:, :10]), np.asarray(b[:, :10]))
    assert not np.allclose(a[:, 10:], b[:, 10:])


def test_bfloat16_compute_close_to_float32(femto):
    model, params = femto
    cfg16 = model_config_from_preset("femto", dtype="bfloat16")
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 512)
    a = model.apply({"params": params}, tokens)
    b = build_model(cfg16).apply({"params": params}, tokens)
    assert b.dtype == jnp.float32  # logits come back in float32
    assert float(jnp.max(jnp.abs(a - b))) < 0.05
