"""Models in and out of transformers: sharded, streamed import of GPT-2, LLaMA (GQA + llama3 rope
scaling), Mistral (sliding window, head_dim != hidden/heads) and Qwen2 (q/k/v biases), each built here
with random weights and `save_pretrained(max_shard_size="200KB")`; and the export of a 50 %-pruned
import back to a directory transformers loads, with logits parity and exact zeros."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxprune import parallel, sparsity  # noqa: E402
from jaxprune.models import Transformer, logical_axes  # noqa: E402
from jaxprune.models import export_hf, import_hf  # noqa: E402
from jaxprune.models.hf import model_config_from_hf, tensor_map  # noqa: E402
from jaxprune.models.trees import flatten  # noqa: E402

TOL = 1e-4
T = 32  # tokens per test sequence (> Mistral's window of 8, so the window matters)
VOCAB = 128


def _perturb(model) -> None:
    """Non-trivial norms and biases (random init leaves them at 1 / 0, which would hide mapping errors)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))


def _build(kind: str):
    torch.manual_seed({"gpt2": 0, "llama": 1, "mistral": 2, "qwen2": 3}[kind])
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = transformers.GPT2LMHeadModel(cfg)
    elif kind == "llama":
        cfg = transformers.LlamaConfig(**common, tie_word_embeddings=False, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
        model = transformers.LlamaForCausalLM(cfg)
    elif kind == "mistral":
        cfg = transformers.MistralConfig(**common, head_dim=32, sliding_window=8, tie_word_embeddings=True)
        model = transformers.MistralForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**common, tie_word_embeddings=True, rope_theta=1000.0)
        model = transformers.Qwen2ForCausalLM(cfg)
    model.eval()
    _perturb(model)
    return model


KINDS = ("gpt2", "llama", "mistral", "qwen2")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """kind -> (directory of a sharded checkpoint, the torch model)."""
    out = {}
    for kind in KINDS:
        model = _build(kind)
        d = tmp_path_factory.mktemp(kind)
        model.save_pretrained(d, max_shard_size="200KB")
        out[kind] = (d, model)
    return out


def _tokens(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(2, T))


def _jax_logits(cfg, params, tokens) -> np.ndarray:
    return np.asarray(jax.jit(Transformer(cfg).apply)({"params": params}, jnp.asarray(tokens)))


def _torch_logits(model, tokens) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.float().numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_import_matches_transformers(checkpoints, kind):
    d, model = checkpoints[kind]
    assert (d / "model.safetensors.index.json").is_file()  # really sharded
    params, cfg = import_hf.load_hf(d)
    expect = {"gpt2": ("gpt2", None, False), "llama": ("llama", "llama3", False),
              "mistral": ("llama", None, False), "qwen2": ("llama", None, True)}[kind]
    assert (cfg.arch, dict(cfg.rope_scaling or {}).get("rope_type"), cfg.qkv_bias) == expect
    if kind == "mistral":
        assert (cfg.sliding_window, cfg.head_dim, cfg.tie_embeddings) == (8, 32, True)
    if kind == "llama":
        assert "lm_head" in params and cfg.n_kv_head == 2
    diff = np.abs(_jax_logits(cfg, params, _tokens()) - _torch_logits(model, _tokens())).max()
    assert diff <= TOL, diff


def test_streamed_import_lands_in_the_mesh_shardings(checkpoints):
    d, _ = checkpoints["llama"]
    host, cfg = import_hf.load_hf(d)
    mesh = parallel.make_mesh(_mesh_cfg())
    shardings = parallel.param_shardings(logical_axes(Transformer(cfg)), mesh, parallel.rules(_mesh_cfg()))
    placed, _ = import_hf.load_hf(d, cfg, shardings=shardings)
    for (path, a), b, sh in zip(jax.tree_util.tree_flatten_with_path(placed)[0], jax.tree.leaves(host),
                                jax.tree.leaves(shardings)):
        assert isinstance(a, jax.Array) and a.sharding == sh, path
        np.testing.assert_array_equal(np.asarray(a), b)


def _mesh_cfg():
    import ml_collections

    from jaxprune.config import default_config
    return ml_collections.ConfigDict(default_config().mesh.to_dict())


@pytest.fixture(scope="module")
def pruned(checkpoints):
    """kind -> (cfg, params, masks): each import pruned to 50 % by global magnitude."""
    out = {}
    for kind in KINDS:
        params, cfg = import_hf.load_hf(checkpoints[kind][0])
        masks = sparsity.prune(params, sparsity.create_masks(params, sparsity.DEFAULT_INCLUDE), 0.5)
        out[kind] = (cfg, sparsity.apply_masks(params, masks), masks)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_pruned_export_loads_in_transformers_with_exact_zeros(pruned, tmp_path, kind):
    cfg, params, masks = pruned[kind]
    export_hf.save_hf(tmp_path, params, cfg, masks=masks, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(model).__name__ == cfg.hf_architecture
    diff = np.abs(_jax_logits(cfg, params, _tokens(1)) - _torch_logits(model, _tokens(1))).max()
    assert diff <= TOL, diff
    # Every pruned weight is exactly 0.0 in the loaded torch model, and nothing else is.
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    names = tensor_map(cfg)
    for path, m in flatten(masks).items():
        key, transposed = names[path]
        w = sd[key].T if transposed else sd[key]
        m = np.asarray(m)
        assert np.all(w[~m] == 0.0) and np.count_nonzero(w[m] == 0.0) == 0, path
    reloaded, cfg2 = import_hf.load_hf(tmp_path)  # and jaxprune reads its own export back bit for bit
    assert cfg2 == cfg
    for a, b in zip(jax.tree.leaves(reloaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_export_writes_a_tokenizer_transformers_loads(tmp_path, shared_tokenizer, pruned):
    from tokenizers import Tokenizer
    cfg, params, masks = pruned["gpt2"]
    tok = Tokenizer.from_file(str(shared_tokenizer))
    cfg = cfg.__class__(**{**cfg.__dict__, "vocab_size": VOCAB})
    export_hf.save_hf(tmp_path, params, cfg, tokenizer=tok, masks=masks)
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
    text = "It was the best of times, it was the worst of times."
    assert hf_tok(text)["input_ids"] == tok.encode(text).ids
    assert json.loads((tmp_path / "generation_config.json").read_text())["_from_model_config"] is True


def test_compacted_model_with_uneven_widths_is_refused(pruned, tmp_path):
    cfg, params, _ = pruned["qwen2"]
    uneven = cfg.__class__(**{**cfg.__dict__, "layer_d_ff": (96, 64)})
    with pytest.raises(ValueError, match="different d_ff per layer"):
        export_hf.save_hf(tmp_path / "x", params, uneven)
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------
# Bad checkpoints: one clear error each, before any weight is read
# ---------------------------------------------------------------------------
def _copy(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_missing_shard_is_named(checkpoints, tmp_path):
    d = _copy(checkpoints["llama"][0], tmp_path / "ck")
    shard = sorted(d.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f"missing shard {shard.name}"):
        import_hf.load_hf(d)


def _rewrite(d, changes: dict) -> None:
    """Replaces (array) or deletes (None) tensors in whichever shards of checkpoint `d` hold them."""
    from safetensors.numpy import load_file, save_file
    weight_map = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    for shard in sorted({weight_map[k] for k in changes}):
        tensors = load_file(str(d / shard))
        for k, v in changes.items():
            if weight_map[k] != shard:
                continue
            if v is None:
                del tensors[k]
            else:
                tensors[k] = v
        save_file(tensors, str(d / shard), metadata={"format": "pt"})


def test_missing_and_misshapen_tensors_are_named(checkpoints, tmp_path):
    d = _copy(checkpoints["qwen2"][0], tmp_path / "ck")
    key = "model.layers.1.self_attn.k_proj.bias"
    _rewrite(d, {key: None, "model.layers.1.self_attn.q_proj.bias": np.zeros(7, np.float32)})
    with pytest.raises(ValueError, match=f"tensor {key} \\(for h_1/attn/k_proj/bias\\) is missing.*"
                                         r"tensor model.layers.1.self_attn.q_proj.bias has shape \(7,\)"):
        import_hf.load_hf(d)


def test_wrong_shape_is_named(checkpoints, tmp_path):
    d = _copy(checkpoints["gpt2"][0], tmp_path / "ck")
    _rewrite(d, {"transformer.h.0.mlp.c_fc.weight": np.zeros((64, 100), np.float32)})
    with pytest.raises(ValueError, match=r"tensor transformer.h.0.mlp.c_fc.weight has shape \(64, 100\), "
                                         r"the model expects \(64, 256\)"):
        import_hf.check_checkpoint(d, import_hf.hf_model_config(d))


def test_unknown_architecture_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["FalconForCausalLM"],
                                                      "model_type": "falcon"}))
    with pytest.raises(ValueError, match="unsupported architecture FalconForCausalLM; jaxprune imports "
                                         "GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"):
        import_hf.hf_model_config(tmp_path)


def test_pickle_only_checkpoints_are_refused(checkpoints, tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / "config.json").write_text((checkpoints["llama"][0] / "config.json").read_text())
    (d / "pytorch_model-00001-of-00002.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pytorch_model-00001-of-00002.bin, a pickle that jaxprune refuses"):
        import_hf.load_hf(d)


def test_config_model_from_hf_reads_transformers4_layout():
    """transformers 4 wrote rope_theta + rope_scaling {"type": ...}; 5 writes rope_parameters."""
    old = {"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 8, "intermediate_size": 16,
           "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 16,
           "rope_theta": 5e5, "rope_scaling": {"type": "linear", "factor": 2.0}}
    cfg = model_config_from_hf(old)
    assert (cfg.rope_theta, dict(cfg.rope_scaling)) == (5e5, {"rope_type": "linear", "factor": 2.0})
    assert cfg.tie_embeddings is False  # LlamaConfig's default


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_uniformly_compacted_model_exports_with_its_smaller_width(pruned, tmp_path, kind):
    """A structurally compacted model (every MLP cut to 48 neurons) is still a transformers model."""
    from jaxprune.models import init_params
    cfg = pruned[kind][0]
    small = cfg.__class__(**{**cfg.__dict__, "layer_d_ff": (48, 48)})
    params, _ = init_params(Transformer(small), jax.random.key(3))
    export_hf.save_hf(tmp_path, params, small)
    assert json.loads((tmp_path / "config.json").read_text())["n_inner" if kind == "gpt2" else
                                                              "intermediate_size"] == 48
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    diff = np.abs(_jax_logits(small, params, _tokens(2)) - _torch_logits(model, _tokens(2))).max()
    assert diff <= TOL, diff


def test_streamed_import_on_8_fake_devices(checkpoints):
    """Each device's block is read straight into it (meshes 8x1x1, 2x2x2, 1x4x2), equal to the host import."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    here = Path(__file__).resolve().parent
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(here / "hf_mesh_check.py"), str(checkpoints["qwen2"][0])], env=env,
                          cwd=here.parent, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for mesh, r in result.items():
        assert r["shardings"] and r["equal"], (mesh, r)
        assert r["bytes_read"] == r["bytes_of_distinct_blocks"], (mesh, r)
    assert result["1x4x2"]["sharded_leaves"] > 0
    assert result["1x4x2"]["bytes_read"] < result["1x4x2"]["bytes_of_whole_tensors_per_device"] / 4
