"""GGUF import: dequantisation checked against independent decoders, a tiny random LLaMA written to GGUF
(llama.cpp's Q/K permutation, mixed tensor types) imported with the logits of transformers' LlamaForCausalLM
holding the same dequantised weights, and the GGUF byte-level BPE tokenizer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gguf import GGMLQuantizationType as Q  # noqa: E402

from jaxprune.models import (  # noqa: E402
    Transformer,
    load_pretrained,
    load_pretrained_tokenizer,
    pretrained_model_config,
)
from jaxprune.models import import_gguf  # noqa: E402

TOL = 1e-4


# ---------------------------------------------------------------------------
# Independent decoders of the GGML block formats (from the format's definition, one block at a time)
# ---------------------------------------------------------------------------
def _f16(b: np.ndarray) -> np.float32:
    return np.float32(b[:2].copy().view(np.float16)[0])


def _ref_q8_0(blk: np.ndarray) -> np.ndarray:  # d f16, 32 x int8
    return _f16(blk) * blk[2:34].view(np.int8).astype(np.float32)


def _ref_q4_0(blk: np.ndarray) -> np.ndarray:  # d f16, 16 bytes of nibbles; low nibbles first
    qs = blk[2:18]
    return _f16(blk) * (np.concatenate([qs & 0xF, qs >> 4]).astype(np.float32) - 8)


def _ref_q4_1(blk: np.ndarray) -> np.ndarray:  # d f16, m f16, 16 bytes of nibbles
    qs = blk[4:20]
    return _f16(blk) * np.concatenate([qs & 0xF, qs >> 4]).astype(np.float32) + _f16(blk[2:4])


def _ref_q4_k(blk: np.ndarray) -> np.ndarray:  # d, dmin f16; 12 bytes of 6-bit scales/mins; 128 bytes nibbles
    d, dmin, sc, qs = _f16(blk), _f16(blk[2:4]), blk[4:16].astype(np.int32), blk[16:144]

    def scale_min(j: int) -> tuple[int, int]:
        if j < 4:
            return sc[j] & 63, sc[j + 4] & 63
        return (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4), (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4)

    out = []
    for j in range(4):  # 4 x 64 values, each from 32 bytes: low nibbles then high nibbles
        q = qs[32 * j: 32 * j + 32]
        (s1, m1), (s2, m2) = scale_min(2 * j), scale_min(2 * j + 1)
        out += [d * s1 * (q & 0xF) - dmin * m1, d * s2 * (q >> 4) - dmin * m2]
    return np.concatenate(out).astype(np.float32)


def _ref_q6_k(blk: np.ndarray) -> np.ndarray:  # 128 bytes ql, 64 bytes qh, 16 int8 scales, d f16
    ql, qh, sc, d = blk[:128].astype(np.int32), blk[128:192].astype(np.int32), blk[192:208].view(np.int8), \
        _f16(blk[208:210])
    y = np.zeros(256, np.float32)
    for n in range(2):
        l_, h_, s_ = ql[64 * n:], qh[32 * n:], sc[8 * n:]
        for i in range(32):
            k = i // 16
            q1 = ((l_[i] & 0xF) | ((h_[i] & 3) << 4)) - 32
            q2 = ((l_[i + 32] & 0xF) | (((h_[i] >> 2) & 3) << 4)) - 32
            q3 = ((l_[i] >> 4) | (((h_[i] >> 4) & 3) << 4)) - 32
            q4 = ((l_[i + 32] >> 4) | (((h_[i] >> 6) & 3) << 4)) - 32
            y[128 * n + i] = d * s_[k] * q1
            y[128 * n + i + 32] = d * s_[k + 2] * q2
            y[128 * n + i + 64] = d * s_[k + 4] * q3
            y[128 * n + i + 96] = d * s_[k + 6] * q4
    return y


_REF = {Q.Q8_0: (_ref_q8_0, 32, 34), Q.Q4_0: (_ref_q4_0, 32, 18), Q.Q4_1: (_ref_q4_1, 32, 20),
        Q.Q4_K: (_ref_q4_k, 256, 144), Q.Q6_K: (_ref_q6_k, 256, 210)}


def ref_dequantize(data: np.ndarray, qtype: Q, shape: tuple[int, int]) -> np.ndarray:
    """float32 (rows, cols) from GGML bytes, decoded block by block."""
    if qtype == Q.F32:
        return data.astype(np.float32).reshape(shape)
    if qtype == Q.F16:
        return data.astype(np.float32).reshape(shape)
    if qtype == Q.BF16:
        return (data.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
    fn, _, size = _REF[qtype]
    blocks = data.reshape(-1, size)
    return np.concatenate([fn(b) for b in blocks]).reshape(shape)


def random_k_quant(rng: np.random.Generator, qtype: Q, shape: tuple[int, int]) -> np.ndarray:
    """Random Q4_K / Q6_K bytes with sane f16 scales (gguf has no K-quant quantizer)."""
    _, bs, size = _REF[qtype]
    blocks = rng.integers(0, 256, size=(shape[0] * shape[1] // bs, size), dtype=np.uint8)
    if qtype == Q.Q4_K:
        blocks[:, 0:2] = np.full((len(blocks), 1), 3e-4, np.float16).view(np.uint8)  # d
        blocks[:, 2:4] = np.full((len(blocks), 1), 2e-4, np.float16).view(np.uint8)  # dmin
    else:
        blocks[:, 208:210] = np.full((len(blocks), 1), 1e-4, np.float16).view(np.uint8)
    return blocks.reshape(shape[0], -1)


def encode(w: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray]:
    """(array to write, reference float32 values) for a float32 (rows, cols) weight."""
    if qtype == Q.F32:
        return w.astype(np.float32), w.astype(np.float32)
    if qtype == Q.F16:
        return w.astype(np.float16), w.astype(np.float16).astype(np.float32)
    data = gguf.quants.quantize(w.astype(np.float32), qtype)
    return data, ref_dequantize(data, qtype, w.shape)


@pytest.mark.parametrize("qtype", [Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K])
def test_gguf_dequantize_matches_independent_decoder(qtype):
    rng = np.random.default_rng(int(qtype))
    shape = (3, 512)
    if qtype in (Q.Q4_K, Q.Q6_K):
        data = random_k_quant(rng, qtype, shape)
        ref = ref_dequantize(data, qtype, shape)
    else:
        w = rng.normal(size=shape).astype(np.float32)
        data, ref = encode(w, qtype)
        step = {Q.BF16: 2 ** -7, Q.Q8_0: 1 / 127, Q.Q4_0: 1 / 8, Q.Q4_1: 1 / 15}[qtype]
        assert np.abs(ref - w).max() <= np.abs(w).max() * step * 1.01  # a real quantiser, not garbage
    got = gguf.quants.dequantize(data, qtype)
    assert got.shape == shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


def test_qk_permutation_round_trip():
    w = np.arange(8 * 6 * 3, dtype=np.float32).reshape(8 * 6, 3)  # 8 heads of dim 6
    p = import_gguf.permute_qk(w, 8)
    # Head 0's rows [0 1 2 | 3 4 5] (rotate-half pairs (0,3),(1,4),(2,5)) become interleaved 0 3 1 4 2 5.
    np.testing.assert_array_equal(p[:6, 0], w[[0, 3, 1, 4, 2, 5], 0])
    np.testing.assert_array_equal(import_gguf.unpermute_qk(p, 8), w)


# ---------------------------------------------------------------------------
# A tiny random LLaMA written to GGUF
# ---------------------------------------------------------------------------
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER = ["<think>"]
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ c", "a t", "Ġc at", "i n", "Ġ a"]


def tiny_vocab() -> tuple[list[str], list[int]]:
    from tokenizers import pre_tokenizers
    tokens = CONTROL + sorted(pre_tokenizers.ByteLevel.alphabet()) + [m.replace(" ", "") for m in MERGES] + USER
    types = [3] * len(CONTROL) + [1] * (len(tokens) - len(CONTROL) - len(USER)) + [4] * len(USER)
    return tokens, types


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:  # llama.cpp convert_hf_to_gguf.py's permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# Tensor type of every GGUF tensor: each supported type appears at least once.
TYPES = {"token_embd": Q.F16, "attn_q": Q.Q8_0, "attn_k": Q.Q4_0, "attn_v": Q.BF16, "attn_output": Q.Q4_1,
         "ffn_gate": Q.Q8_0, "ffn_up": Q.F16, "ffn_down.0": Q.Q4_K, "ffn_down.1": Q.Q6_K, "output": Q.Q8_0}


def write_tiny_llama(path, tied: bool, pre: str = "smollm"):
    """Writes a random 2-layer LLaMA to `path`; returns transformers' model holding the dequantised weights."""
    rng = np.random.default_rng(3 + tied)
    tokens, types = tiny_vocab()
    vocab = len(tokens)
    hf_cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tied)
    torch.manual_seed(int(tied))
    model = transformers.LlamaForCausalLM(hf_cfg).eval()
    sd = {k: v.numpy().copy() for k, v in model.state_dict().items()}

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_feed_forward_length(256)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(16)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    new = {}

    def put(gname: str, hname: str, qtype: Q, heads: int | None = None) -> None:
        x = sd[hname]
        if qtype in (Q.Q4_K, Q.Q6_K):
            data = random_k_quant(rng, qtype, x.shape)
            ref = ref_dequantize(data, qtype, x.shape)
        else:
            if x.ndim == 1:
                x = x + 0.1 * rng.normal(size=x.shape).astype(np.float32)  # non-trivial norm scales
            data, ref = encode(x, qtype)
            if heads is not None:  # rows are quantised independently: permuting commutes with quantising
                data = _permute(data, heads)
        new[hname] = ref
        if qtype in (Q.F32, Q.F16):
            w.add_tensor(gname, data)
        else:
            w.add_tensor(gname, data, raw_dtype=qtype)

    put("token_embd.weight", "model.embed_tokens.weight", TYPES["token_embd"])
    for i in range(2):
        b, h = f"blk.{i}.", f"model.layers.{i}."
        put(b + "attn_norm.weight", h + "input_layernorm.weight", Q.F32)
        put(b + "attn_q.weight", h + "self_attn.q_proj.weight", TYPES["attn_q"], heads=4)
        put(b + "attn_k.weight", h + "self_attn.k_proj.weight", TYPES["attn_k"], heads=2)
        put(b + "attn_v.weight", h + "self_attn.v_proj.weight", TYPES["attn_v"])
        put(b + "attn_output.weight", h + "self_attn.o_proj.weight", TYPES["attn_output"])
        put(b + "ffn_norm.weight", h + "post_attention_layernorm.weight", Q.F32)
        put(b + "ffn_gate.weight", h + "mlp.gate_proj.weight", TYPES["ffn_gate"])
        put(b + "ffn_up.weight", h + "mlp.up_proj.weight", TYPES["ffn_up"])
        put(b + "ffn_down.weight", h + "mlp.down_proj.weight", TYPES[f"ffn_down.{i}"])
    put("output_norm.weight", "model.norm.weight", Q.F32)
    if not tied:
        put("output.weight", "lm_head.weight", TYPES["output"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    if tied:
        new["lm_head.weight"] = new["model.embed_tokens.weight"]
    model.load_state_dict({k: torch.tensor(v) for k, v in new.items()})
    return model


def _config(path) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict({"init": "gguf", "init_path": str(path)})
    return c


@pytest.mark.parametrize("tied", [True, False])
def test_tiny_llama_gguf_logits_match_transformers(tmp_path, tied):
    path = tmp_path / "tiny.gguf"
    model = write_tiny_llama(path, tied)
    reader = gguf.GGUFReader(str(path))
    assert {t.name: t.tensor_type for t in reader.tensors}["blk.1.ffn_down.weight"] == Q.Q6_K

    cfg = pretrained_model_config(_config(path))
    assert (cfg.arch, cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.d_ff, cfg.vocab_size,
            cfg.tie_embeddings, cfg.rope_theta) == ("llama", 2, 64, 4, 2, 256, 268, tied, 10000.0)
    assert cfg.norm_eps == pytest.approx(1e-5, rel=1e-6)
    params = load_pretrained(_config(path), cfg)
    assert ("lm_head" in params) == (not tied)

    tokens = np.random.default_rng(5).integers(0, cfg.vocab_size, size=(2, 24))
    got = np.asarray(jax.jit(Transformer(cfg).apply)({"params": params}, jnp.asarray(tokens)))
    with torch.no_grad():
        want = model(torch.tensor(tokens)).logits.numpy()
    diff = np.abs(got - want).max()
    assert diff <= TOL, diff

    # The file's own config with tie_embeddings flipped is refused with the reason.
    import dataclasses
    with pytest.raises(ValueError, match="tie_embeddings"):
        load_pretrained(_config(path), dataclasses.replace(cfg, tie_embeddings=not tied))


def test_gguf_tokenizer(tmp_path):
    path = tmp_path / "tok.gguf"
    write_tiny_llama(path, tied=True, pre="smollm")
    tok = load_pretrained_tokenizer(_config(path))
    assert tok.get_vocab_size() == 268  # 3 control + 256 bytes + 8 merges + 1 user
    enc = tok.encode("<|im_start|>the cat<think> at 42<|endoftext|>")
    # Control/user tokens stay whole; "smollm" splits digits one by one (llama.cpp's \p{N} pre-split).
    assert enc.tokens == ["<|im_start|>", "t", "he", "Ġcat", "<think>", "Ġ", "at", "Ġ", "4", "2", "<|endoftext|>"]
    assert enc.ids[0] == 1 and enc.ids[-1] == 0
    assert tok.decode(enc.ids, skip_special_tokens=False) == "<|im_start|>the cat<think> at 42<|endoftext|>"
    assert import_gguf.gguf_special_ids(import_gguf.open_gguf(path)) == {"bos": 1, "eos": 2}
    # transformers' own GGUF tokenizer agrees (on text where its missing digit pre-split cannot matter).
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="tok.gguf")
    for text in ["the cat in the hat", " at a cat<|im_end|>\n\nthe", "ünïcode thé  spaces"]:
        assert tok.encode(text).ids == ref(text, add_special_tokens=False)["input_ids"], text


def test_gguf_errors(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        import_gguf.load_gguf(tmp_path / "x.gguf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_gguf.load_gguf(tmp_path / "missing.gguf")
