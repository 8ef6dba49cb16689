"""Config validation: every problem is reported, before any compute, with one clear line."""

import subprocess
import sys

import pytest
from conftest import ROOT

from jaxprune.config import ConfigError, default_config, model_config, validate


def _errors(config) -> str:
    with pytest.raises(ConfigError) as e:
        validate(config)
    return str(e.value)


def test_default_config_is_valid(make_config):
    validate(make_config())


@pytest.mark.parametrize("key,value,message", [
    ("model.preset", "gpt5", "unknown model preset 'gpt5'"),
    ("pretrain.steps", -1, "pretrain.steps must be a non-negative integer, got -1"),
    ("finetune.batch_size", 0, "finetune.batch_size must be a positive integer"),
    ("pruning.rates", (0.5, 1.0), "every rate must be in [0, 1), got 1.0"),
    ("pruning.rates", (-0.1,), "every rate must be in [0, 1), got -0.1"),
    ("pruning.rates", (0.5, 0.3), "must be non-decreasing"),
    ("pruning.method", "taylor", "pruning.method must be one of"),
    ("pruning.pattern", "blocks", "pruning.pattern must be one of"),
    ("eval.tasks", ("heldout", "mmlu"), "unknown task 'mmlu'"),
    ("data.data_dir", "/nonexistent/data", "data directory '/nonexistent/data' does not exist"),
    ("data.source", "imagenet", "data.source must be one of"),
    ("model.init", "gguf", "model.init='gguf' needs model.init_path"),
    ("pretrain.grad_accum", 3, "batch_size=8 is not divisible by grad_accum=3"),
    ("mesh.data", 0, "mesh: axis sizes must be positive"),
])
def test_each_problem_has_a_clear_error(make_config, key, value, message):
    assert message in _errors(make_config(**{key: value}))


def test_all_problems_reported_at_once(make_config):
    text = _errors(make_config(**{"model.preset": "nope", "pretrain.steps": -5, "eval.tasks": ("x",)}))
    assert text.count("\n  - ") == 3


def test_missing_data_file_is_named(make_config, tmp_path):
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "splits.json").write_text("{}")
    text = _errors(make_config(**{"data.data_dir": str(tmp_path), "eval.tasks": ("heldout", "lambada")}))
    assert f"missing data file '{tmp_path}/lambada/lambada_test.jsonl'" in text


def test_nm_rates_must_match_pattern(make_config):
    text = _errors(make_config(**{"pruning.pattern": "nm", "pruning.rates": (0.3,)}))
    assert "disagree with the 2:4 pattern" in text
    validate(make_config(**{"pruning.pattern": "nm", "pruning.rates": (0.5,)}))


def test_preset_and_overrides_resolve():
    c = default_config()
    c.model.preset = "gpt2"
    m = model_config(c)
    assert (m.n_layer, m.d_model, m.n_head, m.max_len, m.vocab_size) == (12, 768, 12, 1024, 50257)
    c.model.preset = "gpt3-175b"
    m = model_config(c)
    assert (m.n_layer, m.d_model, m.n_head, m.head_dim) == (96, 12288, 96, 128)
    c.model.max_len = 512
    assert model_config(c).max_len == 512


def test_command_line_rejects_bad_config_before_compute(tmp_path):
    """`--config.x=y` overrides reach validation; a bad one exits 2 with the message, writing nothing."""
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "jaxprune.main", "--config=configs/gpt_lambada.py", f"--workdir={workdir}",
         "--config.pruning.rates=(0.2,1.5)", "--config.model.preset=gpt9"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2
    assert "every rate must be in [0, 1), got 1.5" in proc.stderr
    assert "unknown model preset 'gpt9'" in proc.stderr
    assert not workdir.exists()
