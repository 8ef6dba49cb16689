"""Export a LLaMA-architecture jaxprune model (LLaMA, SmolLM, TinyLlama) as a GGUF file for llama.cpp.

    save_gguf("model.gguf", params, cfg, tokenizer, masks=masks, dtype="q8_0")

Written with the `gguf` package: the `llama.*` hyper-parameters, the byte-level BPE tokenizer
(`tokenizer.ggml.*`: tokens, types, merges, pre-tokenizer name, bos/eos), and every tensor as
llama.cpp's converter lays it out — torch (out, in) matrices with the Q/K rows permuted to
llama.cpp's interleaved rotary order (`import_gguf.permute_qk`), names from the one map the
importer uses (`import_gguf.gguf_tensor_map`). dtype: f32, f16, bf16 or q8_0 for the matrices;
1-D tensors (norms) stay float32, as llama.cpp's converter keeps them. Pruned weights are
exactly 0.0 in f32/f16/bf16 and in q8_0 (zero quantises to zero).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxprune.models import import_gguf
from jaxprune.models.export_hf import masked_flat
from jaxprune.models.presets import ModelConfig

DTYPES = ("f32", "f16", "bf16", "q8_0")


def _types():
    from gguf import GGMLQuantizationType as Q, LlamaFileType as F

    return {"f32": (Q.F32, F.ALL_F32), "f16": (Q.F16, F.MOSTLY_F16), "bf16": (Q.BF16, F.MOSTLY_BF16),
            "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0)}


def check_exportable(cfg: ModelConfig, dtype: str) -> None:
    """ValueError (one line) for a model or dtype this exporter cannot write as llama.cpp reads it."""
    if dtype not in DTYPES:
        raise ValueError(f"GGUF dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if cfg.arch != "llama":
        raise ValueError(f"GGUF export writes LLaMA-architecture models; this one is arch={cfg.arch!r} "
                         f"(export it with --format=hf)")
    reasons = {"attention or MLP biases (e.g. Qwen2)": cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias,
               "rope_scaling": cfg.rope_scaling is not None, "a sliding attention window": cfg.sliding_window,
               f"head_dim {cfg.head_dim} != d_model / n_head": cfg.d_head not in (None, cfg.d_model // cfg.n_head),
               "per-layer widths (compacted)": cfg.layer_d_ff is not None or cfg.layer_n_head is not None}
    for what, present in reasons.items():
        if present:
            raise ValueError(f"GGUF export of a model with {what} is not supported; use --format=hf")


def pre_tokenizer_name(tokenizer: Any) -> str:
    """The `tokenizer.ggml.pre` name whose pre-tokenizer (as the importer builds it) equals the tokenizer's."""
    def norm(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: norm(v) for k, v in obj.items() if k != "trim_offsets"}
        if isinstance(obj, list):
            return [norm(v) for v in obj]
        return obj

    mine = norm(json.loads(tokenizer.to_str()).get("pre_tokenizer"))
    for name in ("gpt2", "smollm", "llama-bpe"):
        if norm(json.loads(import_gguf._pre_tokenizer(name).__getstate__())) == mine:
            return name
    raise ValueError("the tokenizer's pre-tokenizer matches none llama.cpp knows (gpt2, smollm, llama-bpe); "
                     "it cannot be written to GGUF")


def add_tokenizer(writer: Any, tokenizer: Any) -> None:
    """tokenizer.ggml.* keys of a byte-level BPE `tokenizers.Tokenizer`."""
    spec = json.loads(tokenizer.to_str())
    model = spec["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"GGUF export needs a byte-level BPE tokenizer, got {model.get('type')!r}")
    n = tokenizer.get_vocab_size(with_added_tokens=True)
    tokens = [""] * n
    for tok, i in tokenizer.get_vocab(with_added_tokens=True).items():
        tokens[i] = tok
    if "" in tokens:
        raise ValueError("the tokenizer's ids are not contiguous; it cannot be written to GGUF")
    types = [import_gguf.TOKEN_NORMAL] * n
    for i, added in tokenizer.get_added_tokens_decoder().items():
        types[i] = import_gguf.TOKEN_CONTROL if added.special else import_gguf.TOKEN_USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_name(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    post = spec.get("post_processor") or {}
    specials = {t.content: i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
    bos_id = None
    if post.get("type") == "TemplateProcessing":  # BOS prepended to every encoding
        first = post["single"][0]
        if "SpecialToken" in first:
            bos_id = specials.get(first["SpecialToken"]["id"])
    writer.add_add_bos_token(bos_id is not None)
    bos = bos_id if bos_id is not None else next((specials[t] for t in ("<|endoftext|>", "<s>", "<|im_start|>")
                                                  if t in specials), None)
    eos = next((specials[t] for t in ("<|endoftext|>", "</s>", "<|im_end|>") if t in specials), bos)
    if bos is not None:
        writer.add_bos_token_id(bos)
    if eos is not None:
        writer.add_eos_token_id(eos)


def save_gguf(path: str | os.PathLike, params: Any, cfg: ModelConfig, tokenizer: Any, masks: Any = None,
              dtype: str = "f32", name: str = "jaxprune", progress: bool = False) -> Path:
    """Writes `path` (see the module docstring); returns it."""
    import gguf
    from tqdm.auto import tqdm

    check_exportable(cfg, dtype)
    qtype, ftype = _types()[dtype]
    names = import_gguf.gguf_tensor_map(cfg)
    flat = masked_flat(params, masks)
    missing = sorted(names.keys() - flat.keys())
    if missing:
        raise ValueError(f"params lack {missing[0]} for this model config")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_file_type(int(ftype))
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_context_length(cfg.max_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    add_tokenizer(writer, tokenizer)
    for p, (tname, heads) in tqdm(names.items(), desc=f"writing {path.name}", unit="tensor", disable=not progress,
                                  leave=False):
        a = flat[p]
        if p.endswith("/kernel"):  # (in, out) -> torch's (out, in), Q/K rows in llama.cpp's rotary order
            a = a.T
            if heads:
                a = import_gguf.permute_qk(a, heads)
        a = np.ascontiguousarray(a, np.float32)
        t = qtype if a.ndim == 2 else gguf.GGMLQuantizationType.F32
        if t == gguf.GGMLQuantizationType.Q8_0 and a.shape[-1] % 32:  # Q8_0 blocks 32 values of a row
            t = gguf.GGMLQuantizationType.F16
        data = gguf.quants.quantize(a, t)
        writer.add_tensor(tname, data, raw_dtype=t)  # quantised data: byte shape, converted by gguf
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
