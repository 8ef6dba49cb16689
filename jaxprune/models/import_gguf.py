"""Import LLaMA-style GGUF files (llama.cpp's format) and their tokenizers.

Tensors are read with `gguf.GGUFReader` and dequantised to float32 with
`gguf.quants.dequantize` (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K and the other
types it implements). GGUF stores a linear layer's weight as torch does, (out, in);
jaxprune kernels are (in, out), so every matrix is transposed.

llama.cpp's converter permutes the rows of the Q and K projections so that rotary
pairs are interleaved (GPT-J layout) rather than split in halves (HF "rotate half"):

    w.reshape(n, 2, d // 2, E).swapaxes(1, 2).reshape(n * d, E)    n = heads (K: kv heads), d = head dim

`unpermute_qk` inverts it, after which the HF-layout rotary of `transformer.py` applies.

Names: token_embd -> wte, blk.{i}.attn_norm -> h_{i}/ln_1, attn_{q,k,v,output} ->
attn/{q,k,v,o}_proj, ffn_norm -> ln_2, ffn_{gate,up,down} -> mlp/{gate,up,down}_proj,
output_norm -> ln_f, output -> lm_head (absent when the embeddings are tied).

    >>> params, cfg = load_gguf("SmolLM2-135M-Instruct.Q4_1.gguf")    # doctest: +SKIP
    >>> tok = gguf_tokenizer(open_gguf("SmolLM2-135M-Instruct.Q4_1.gguf"))   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxprune.models.presets import ModelConfig
from jaxprune.models.trees import unflatten

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# tokenizer.ggml.pre -> how text is split before BPE (llama.cpp's llama-vocab.cpp pre-tokenizer types).
_GPT2_PRE = ("default", "gpt2", "gpt-2", "mpt", "olmo", "jais")
_DIGITS_PRE = ("smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva")  # \p{N} alone first
_LLAMA3_PRE = ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def open_gguf(path: str | os.PathLike) -> "gguf.GGUFReader":  # noqa: F821
    """A memory-mapped GGUFReader; clear errors for a missing or non-GGUF file."""
    import gguf

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{str(path)!r} is not a GGUF file (no GGUF magic)")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf's parser fails with assorted errors on a truncated or damaged file
        raise ValueError(f"{str(path)!r} is not a readable GGUF file (truncated or damaged?): "
                         f"{type(e).__name__}: {e}") from e
    for t in reader.tensors:
        if any(int(d) == 0 for d in t.shape):
            raise ValueError(f"{str(path)!r}: GGUF tensor {t.name!r} has a zero dimension {tuple(map(int, t.shape))}")
    return reader


def metadata(reader: Any, key: str, default: Any = None) -> Any:
    """The value of a GGUF key (str, number, or list), or `default` when absent."""
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------
def _f32(v: Any) -> float:
    """A float32 GGUF value as the shortest decimal that rounds to it (1e-5, not 9.9999997e-06)."""
    return float(str(np.float32(v)))


def gguf_model_config(reader: Any, **overrides: Any) -> ModelConfig:
    """ModelConfig from a GGUF's `llama.*` metadata (tie_embeddings: no `output.weight` tensor)."""
    arch = metadata(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not supported; jaxprune imports 'llama' GGUF files")
    a = arch + "."

    def need(key: str) -> Any:
        v = metadata(reader, a + key)
        if v is None:
            raise ValueError(f"GGUF metadata lacks {a + key}")
        return v

    e, h = int(need("embedding_length")), int(need("attention.head_count"))
    kv = int(metadata(reader, a + "attention.head_count_kv", h))
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        v = metadata(reader, a + key)
        if v is not None and int(v) != e // h:
            raise ValueError(f"GGUF {a + key}={v} differs from head dim {e // h}; partial rotary and "
                             f"non-standard head dims are not supported")
    if metadata(reader, a + "rope.scaling.type", "none") not in ("none", None):
        raise ValueError("GGUF rope scaling is not supported")
    names = {t.name for t in reader.tensors}
    vocab = metadata(reader, a + "vocab_size")
    if vocab is None:
        vocab = next(int(t.shape[1]) for t in reader.tensors if t.name == "token_embd.weight")
    fields = dict(arch="llama", vocab_size=int(vocab), max_len=int(need("context_length")),
                  n_layer=int(need("block_count")), d_model=e, n_head=h, n_kv_head=kv,
                  d_ff=int(need("feed_forward_length")),
                  norm_eps=_f32(metadata(reader, a + "attention.layer_norm_rms_epsilon", 1e-5)),
                  rope_theta=_f32(metadata(reader, a + "rope.freq_base", 10000.0)),
                  tie_embeddings="output.weight" not in names)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**fields)


# ---------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------
def dequantize_tensor(tensor: Any) -> np.ndarray:
    """A GGUF ReaderTensor as float32, numpy shape = reversed GGML dims ((out, in) for matrices)."""
    from gguf import quants

    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    try:
        x = quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as err:
        raise ValueError(f"GGUF tensor {tensor.name!r} has type {tensor.tensor_type.name}, which gguf cannot "
                         f"dequantize") from err
    return np.asarray(x, dtype=np.float32).reshape(shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's HF -> GGUF row permutation of a Q or K weight (rows = n_head * head_dim)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of `permute_qk`: GGUF's interleaved rotary rows back to HF's rotate-half order."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensor_map(cfg: ModelConfig) -> dict[str, tuple[str, int | None]]:
    """jaxprune path -> (GGUF tensor name, heads of the Q/K permutation or None), for a llama-arch model.

    Every GGUF matrix is the torch (out, in) weight, i.e. the transpose of the jaxprune kernel; shared by the
    importer and `export_gguf`.
    """
    if cfg.arch != "llama":
        raise ValueError(f"GGUF tensors are mapped for arch 'llama' (LLaMA, SmolLM, Mistral); got {cfg.arch!r}")
    if cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias:
        raise ValueError("GGUF llama tensors have no biases; this model has attention or MLP biases (e.g. Qwen2)")
    out: dict[str, tuple[str, int | None]] = {"wte/embedding": ("token_embd.weight", None),
                                              "ln_f/scale": ("output_norm.weight", None)}
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        out.update({
            f"h_{i}/ln_1/scale": (b + "attn_norm.weight", None),
            f"h_{i}/attn/q_proj/kernel": (b + "attn_q.weight", cfg.n_head),
            f"h_{i}/attn/k_proj/kernel": (b + "attn_k.weight", cfg.kv_heads),
            f"h_{i}/attn/v_proj/kernel": (b + "attn_v.weight", None),
            f"h_{i}/attn/o_proj/kernel": (b + "attn_output.weight", None),
            f"h_{i}/ln_2/scale": (b + "ffn_norm.weight", None),
            f"h_{i}/mlp/gate_proj/kernel": (b + "ffn_gate.weight", None),
            f"h_{i}/mlp/up_proj/kernel": (b + "ffn_up.weight", None),
            f"h_{i}/mlp/down_proj/kernel": (b + "ffn_down.weight", None),
        })
    if not cfg.tie_embeddings:
        out["lm_head/kernel"] = ("output.weight", None)
    return out


def gguf_params(reader: Any, cfg: ModelConfig, progress: bool = False) -> dict[str, Any]:
    """All weights of a llama GGUF as a float32 jaxprune param tree (kernels (in, out), Q/K unpermuted)."""
    from tqdm.auto import tqdm

    tensors = {t.name: t for t in reader.tensors}
    flat: dict[str, Any] = {}
    for path, (name, heads) in tqdm(gguf_tensor_map(cfg).items(), desc="dequantising GGUF", unit="tensor",
                                    disable=not progress, leave=False):
        if name not in tensors:
            raise KeyError(f"GGUF file is missing tensor {name!r}")
        w = dequantize_tensor(tensors[name])
        if path.endswith("/kernel"):  # (out, in) -> (in, out)
            w = np.ascontiguousarray((unpermute_qk(w, heads) if heads else w).T)
        flat[path] = w
    return unflatten(flat)


def load_gguf(path: str | os.PathLike, progress: bool = False, **overrides: Any) -> tuple[dict[str, Any], ModelConfig]:
    """(params, ModelConfig) of a llama GGUF file, every tensor dequantised to float32."""
    reader = open_gguf(path)
    cfg = gguf_model_config(reader, **overrides)
    return gguf_params(reader, cfg, progress=progress), cfg


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------
def _pre_tokenizer(pre: str) -> Any:
    from tokenizers import Regex, pre_tokenizers

    if pre in _GPT2_PRE:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre in _LLAMA3_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise ValueError(f"GGUF pre-tokenizer {pre!r} is not supported; supported: "
                     f"{', '.join(_GPT2_PRE + _DIGITS_PRE + _LLAMA3_PRE)}")


def gguf_special_ids(reader: Any) -> dict[str, int]:
    """bos/eos/unknown/padding token ids the GGUF declares (absent ones omitted)."""
    out = {}
    for name in ("bos", "eos", "unknown", "padding"):
        v = metadata(reader, f"tokenizer.ggml.{name}_token_id")
        if v is not None:
            out[name] = int(v)
    return out


def gguf_tokenizer(reader: Any) -> "tokenizers.Tokenizer":  # noqa: F821
    """The GGUF's byte-level BPE (tokenizer.ggml.model 'gpt2') as a `tokenizers.Tokenizer`.

    Control tokens (type 3) become special tokens and user-defined ones (type 4) added tokens, so
    neither is split; `tokenizer.ggml.add_bos_token` = true prepends BOS to every encoding.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    kind = metadata(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported; jaxprune builds byte-level BPE "
                         f"('gpt2') tokenizers")
    tokens = metadata(reader, "tokenizer.ggml.tokens")
    merges = metadata(reader, "tokenizer.ggml.merges")
    if not tokens or merges is None:
        raise ValueError("GGUF tokenizer lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    types = metadata(reader, "tokenizer.ggml.token_type") or [TOKEN_NORMAL] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
    tok.pre_tokenizer = _pre_tokenizer(metadata(reader, "tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == TOKEN_CONTROL]
    added = [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types)
             if k == TOKEN_USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if added:
        tok.add_tokens(added)
    ids = gguf_special_ids(reader)
    if metadata(reader, "tokenizer.ggml.add_bos_token", False) and "bos" in ids:
        bos = tokens[ids["bos"]]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, ids["bos"])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok
