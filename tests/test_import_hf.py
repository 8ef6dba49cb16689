"""HF import parity: jaxprune logits == transformers logits on tiny random GPT-2 and LLaMA checkpoints."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxprune.models import (  # noqa: E402
    Transformer,
    load_pretrained,
    load_pretrained_tokenizer,
    pretrained_model_config,
)
from jaxprune.models import import_hf  # noqa: E402
from jaxprune.models.hf import model_config_from_hf  # noqa: E402
from jaxprune.models.presets import ModelConfig  # noqa: E402

TOL = 1e-4


def _config(init: str, path) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"init": init, "init_path": str(path)})
    return c


def _logits(cfg: ModelConfig, params, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(jax.jit(Transformer(cfg).apply)({"params": params}, jnp.asarray(tokens)))


def _torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(vocab_size=96, n_positions=32, n_embd=48, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(hf_cfg).eval()
    with torch.no_grad():  # random, non-trivial LayerNorm parameters and biases
        for name, p in model.named_parameters():
            if "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    d = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(d, safe_serialization=True)
    return d, model


def test_gpt2_logits_match_transformers(gpt2_dir):
    d, model = gpt2_dir
    cfg = pretrained_model_config(_config("hf_gpt2", d))
    assert cfg == ModelConfig(arch="gpt2", vocab_size=96, max_len=32, n_layer=2, d_model=48, n_head=4, d_ff=192,
                              norm_eps=1e-5, tie_embeddings=True, hf_architecture="GPT2LMHeadModel")
    params = load_pretrained(_config("hf_gpt2", d), cfg)
    tokens = np.random.default_rng(0).integers(0, 96, size=(2, 32))
    diff = np.abs(_logits(cfg, params, tokens) - _torch_logits(model, tokens)).max()
    assert diff <= TOL, diff


def test_gpt2_shorter_context_keeps_first_positions(gpt2_dir):
    d, model = gpt2_dir
    cfg = pretrained_model_config(_config("hf_gpt2", d), max_len=8)
    params = load_pretrained(_config("hf_gpt2", d), cfg)
    assert params["wpe"]["embedding"].shape == (8, 48)
    tokens = np.random.default_rng(1).integers(0, 96, size=(1, 8))
    assert np.abs(_logits(cfg, params, tokens) - _torch_logits(model, tokens)).max() <= TOL


def test_gpt2_shape_mismatch_names_the_matching_preset(gpt2_dir):
    d, _ = gpt2_dir
    wrong = ModelConfig(arch="gpt2", vocab_size=96, max_len=32, n_layer=3, d_model=48, n_head=4, d_ff=192)
    with pytest.raises(ValueError, match=r"tensor transformer.h.2.attn.c_attn.weight \(for h_2/attn/c_attn/kernel\) "
                                         r"is missing.*use model.preset='auto'"):
        load_pretrained(_config("hf_gpt2", d), wrong)
    # A real gpt2-medium config.json checked against the gpt2 preset names gpt2-medium.
    medium = model_config_from_hf(dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=1024,
                                              n_layer=24, n_head=16))
    from jaxprune.models.pretrained import matching_preset
    assert matching_preset(medium) == "gpt2-medium"


def test_refuses_pickles_and_fails_fast_offline(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "vocab_size": 8, "n_positions": 4,
                                                      "n_embd": 4, "n_layer": 1, "n_head": 1}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pytorch_model.bin, a pickle that jaxprune refuses to load"):
        import_hf.load_hf_checkpoint(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match=r"is unreachable. Download it on a machine with internet access \(`hf download openai-community/gpt2-not-here"):
        import_hf.resolve_checkpoint("openai-community/gpt2-not-here")


def test_tokenizer_from_vocab_and_merges_matches_transformers(tmp_path):
    # A tiny byte-level BPE written as vocab.json + merges.txt (GPT-2's format).
    from tokenizers import pre_tokenizers
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "c"), ("a", "t")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = load_pretrained_tokenizer(_config("hf_gpt2", tmp_path))
    enc = tok.encode("the cat<|endoftext|> the")
    assert enc.tokens == ["t", "he", "Ġc", "at", "<|endoftext|>", "Ġthe"]
    assert tok.decode(enc.ids, skip_special_tokens=False) == "the cat<|endoftext|> the"
    ref = transformers.GPT2Tokenizer.from_pretrained(str(tmp_path))  # reads vocab.json + merges.txt
    text = "the hat, that cat; ünïcode  spaces\n<|endoftext|>x"
    assert tok.encode(text).ids == ref(text)["input_ids"]


@pytest.mark.parametrize("tied", [True, False])
def test_llama_logits_match_transformers(tmp_path, tied):
    torch.manual_seed(1)
    hf_cfg = transformers.LlamaConfig(vocab_size=80, hidden_size=48, intermediate_size=72, num_hidden_layers=2,
                                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=32,
                                      rms_norm_eps=1e-5, rope_theta=1000.0, tie_word_embeddings=tied)
    model = transformers.LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path, safe_serialization=True)
    cfg = pretrained_model_config(_config("hf_gpt2", tmp_path))
    assert (cfg.arch, cfg.n_kv_head, cfg.tie_embeddings, cfg.rope_theta, cfg.norm_eps) == \
        ("llama", 2, tied, 1000.0, 1e-5)
    params = load_pretrained(_config("hf_gpt2", tmp_path), cfg)
    assert ("lm_head" in params) == (not tied)
    tokens = np.random.default_rng(2).integers(0, 80, size=(2, 32))
    diff = np.abs(_logits(cfg, params, tokens) - _torch_logits(model, tokens)).max()
    assert diff <= TOL, diff


def test_read_safetensors_upcasts_bf16_and_f16(tmp_path):
    from safetensors.torch import save_file
    save_file({"a": torch.tensor([[1.0, -2.5]]), "b": torch.tensor([1.5, -0.25], dtype=torch.bfloat16),
               "c": torch.tensor([3.0], dtype=torch.float16)}, str(tmp_path / "m.safetensors"))
    got = import_hf.read_safetensors(tmp_path / "m.safetensors")
    assert {k: v.dtype for k, v in got.items()} == {"a": np.float32, "b": np.float32, "c": np.float32}
    np.testing.assert_array_equal(got["b"], [1.5, -0.25])
    np.testing.assert_array_equal(got["c"], [3.0])
