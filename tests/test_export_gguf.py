"""GGUF export: a 50 %-pruned LLaMA-architecture model written as F32 / F16 / BF16 / Q8_0 and read back
by jaxprune's own importer (F32 bit-exact, the others exactly their type's rounding) and by transformers'
`gguf_file=` loader (logits parity with the jaxprune model)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune import sparsity
from jaxprune.models import Transformer, init_params
from jaxprune.models import export_gguf, import_gguf
from jaxprune.models.presets import ModelConfig
from jaxprune.models.trees import flatten

CFG = ModelConfig(arch="llama", vocab_size=512, max_len=64, n_layer=2, d_model=64, n_head=4, n_kv_head=2,
                  d_ff=96, norm_eps=1e-5, rope_theta=10000.0, tie_embeddings=False)


@pytest.fixture(scope="module")
def model(shared_tokenizer):
    from tokenizers import Tokenizer
    params, _ = init_params(Transformer(CFG), jax.random.key(0))
    params = jax.tree.map(lambda x: np.asarray(x) + 0.05 * np.random.default_rng(0).standard_normal(x.shape)
                          .astype(np.float32), params)  # non-trivial norms
    masks = sparsity.prune(params, sparsity.create_masks(params, sparsity.DEFAULT_INCLUDE), 0.5)
    params = jax.tree.map(np.asarray, sparsity.apply_masks(params, masks))
    return params, masks, Tokenizer.from_file(str(shared_tokenizer))


def _flat(tree):
    return {k: np.asarray(v) for k, v in flatten(tree).items()}


@pytest.mark.parametrize("dtype", export_gguf.DTYPES)
def test_gguf_round_trip_through_jaxprune(model, tmp_path, dtype):
    import gguf
    params, masks, tok = model
    f = export_gguf.save_gguf(tmp_path / f"m.{dtype}.gguf", params, CFG, tok, masks=masks, dtype=dtype)
    back, cfg = import_gguf.load_gguf(f)
    assert cfg == CFG
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[dtype]
    ours, theirs = _flat(params), _flat(back)
    for k, a in ours.items():
        if a.ndim == 1 or dtype == "f32":
            np.testing.assert_array_equal(theirs[k], a, err_msg=k)
            continue
        # Exactly the type's own rounding of the (transposed, permuted) matrix, permuted back.
        kernel = k.endswith("/kernel")  # stored as torch's (out, in); the embedding as it is
        w = a.T if kernel else a
        heads = dict(import_gguf.gguf_tensor_map(CFG))[k][1]
        if heads:
            w = import_gguf.permute_qk(w, heads)
        w = gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(w), qtype), qtype).reshape(w.shape)
        if heads:
            w = import_gguf.unpermute_qk(w, heads)
        np.testing.assert_array_equal(theirs[k], w.T if kernel else w, err_msg=k)
        if k in _flat(masks):  # pruned weights stay exactly zero
            assert np.all(theirs[k][~np.asarray(_flat(masks)[k])] == 0.0), k
    assert import_gguf.gguf_tokenizer(import_gguf.open_gguf(f)).encode("Call me Ishmael.").ids == \
        tok.encode("Call me Ishmael.").ids


def test_gguf_export_loads_in_transformers(model, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    params, masks, tok = model
    export_gguf.save_gguf(tmp_path / "m.gguf", params, CFG, tok, masks=masks, dtype="f32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf").eval()
    tokens = np.random.default_rng(0).integers(0, CFG.vocab_size, size=(2, 32))
    ours = np.asarray(jax.jit(Transformer(CFG).apply)({"params": params}, jnp.asarray(tokens)))
    with torch.no_grad():
        theirs = hf(torch.tensor(tokens)).logits.float().numpy()
    assert np.abs(ours - theirs).max() <= 1e-4


def test_gguf_refuses_what_llama_cpp_cannot_read(model, tmp_path):
    params, masks, tok = model
    with pytest.raises(ValueError, match="GGUF dtype must be one of f32, f16, bf16, q8_0"):
        export_gguf.save_gguf(tmp_path / "a.gguf", params, CFG, tok, dtype="q4_k")
    gpt2 = ModelConfig(arch="gpt2")
    with pytest.raises(ValueError, match="arch='gpt2' \\(export it with --format=hf\\)"):
        export_gguf.save_gguf(tmp_path / "b.gguf", params, gpt2, tok)
    qwen = ModelConfig(**{**CFG.__dict__, "qkv_bias": True})
    with pytest.raises(ValueError, match="biases"):
        export_gguf.save_gguf(tmp_path / "c.gguf", params, qwen, tok)
    assert not list(tmp_path.iterdir())  # nothing written
