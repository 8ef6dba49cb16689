"""Import Hugging Face GPT-2 checkpoints (safetensors only) and their tokenizers.

A checkpoint is a directory holding `config.json` and `model.safetensors` (gpt2 ...
gpt2-xl as published on the hub, or anything written by
`GPT2LMHeadModel.save_pretrained(dir, safe_serialization=True)`). Torch pickles
(`pytorch_model.bin`) are refused: loading them would run arbitrary code.

HF GPT-2 uses `Conv1D` layers whose weight is already (in, out), the layout of a
Flax `Dense` kernel, so the import is a name copy (nanoGPT's naming):

    h.{i}.attn.c_attn.weight (E, 3E)  ->  h_{i}/attn/c_attn/kernel   columns [q | k | v], head-major
    wte.weight (V, E)                 ->  wte/embedding
    ln_f.weight / ln_f.bias           ->  ln_f/scale / ln_f/bias

    >>> params, cfg = load_hf_gpt2("/data/gpt2")           # doctest: +SKIP
    >>> tok = load_hf_tokenizer("/data/gpt2")               # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np

from jaxprune.models.presets import ModelConfig

HF_HOST = "huggingface.co"
SAFETENSORS = "model.safetensors"
PICKLES = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


# ---------------------------------------------------------------------------
# Locating a checkpoint: local directory, or the hub when online
# ---------------------------------------------------------------------------
def hub_reachable(host: str = HF_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """True if a TCP connection to the hub opens within `timeout` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub repo id downloaded (config, safetensors, tokenizer files).

    Fails fast offline (3 s connectivity check) with instructions instead of hanging in retries.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{str(path)!r} is a file; pass the checkpoint directory (config.json + {SAFETENSORS})")
    name = str(name_or_path)
    if not hub_reachable():
        raise ConnectionError(
            f"{name!r} is not a local directory and the Hugging Face hub ({HF_HOST}:443) is unreachable. "
            f"Download the model directory on a machine with internet access, e.g.\n"
            f"  huggingface-cli download {name} config.json {SAFETENSORS} tokenizer.json vocab.json merges.txt "
            f"--local-dir ./{name.split('/')[-1]}\n"
            f"copy it here and pass its path as model.init_path.")
    from huggingface_hub import snapshot_download  # imported lazily: only needed online
    return Path(snapshot_download(
        name, allow_patterns=["config.json", SAFETENSORS, "tokenizer.json", "vocab.json", "merges.txt"],
        etag_timeout=10))


# ---------------------------------------------------------------------------
# Config and weights
# ---------------------------------------------------------------------------
def read_hf_config(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's config.json as a dict."""
    f = Path(path) / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{str(f)!r} does not exist; a HF checkpoint directory needs config.json")
    return json.loads(f.read_text())


def gpt2_model_config(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """ModelConfig of a HF GPT-2 config.json (`overrides` such as dtype are passed through)."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"expected a GPT-2 checkpoint (model_type 'gpt2'), got model_type={hf.get('model_type')!r}")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"unsupported activation_function {act!r}: jaxprune's GPT-2 uses tanh-approximated GELU")
    e = hf["n_embd"]
    fields = dict(arch="gpt2", vocab_size=hf["vocab_size"], max_len=hf["n_positions"], n_layer=hf["n_layer"],
                  d_model=e, n_head=hf["n_head"], d_ff=hf.get("n_inner") or 4 * e,
                  norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=True)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**fields)


def _safetensors_file(path: Path) -> Path:
    f = path / SAFETENSORS
    if f.is_file():
        return f
    if (path / "model.safetensors.index.json").is_file():
        raise ValueError(f"{str(path)!r} holds a sharded checkpoint; jaxprune imports a single {SAFETENSORS}")
    found = [p for p in PICKLES if (path / p).is_file()]
    if found:
        raise ValueError(
            f"{str(path)!r} has only {found[0]}, a pickle that jaxprune refuses to load (unpickling runs "
            f"arbitrary code). Convert it to {SAFETENSORS} (e.g. with transformers: "
            f"model.save_pretrained(dir, safe_serialization=True)) or download the safetensors file.")
    raise FileNotFoundError(f"no {SAFETENSORS} in {str(path)!r}")


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file as float32 numpy arrays (bf16/f16 upcast)."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="numpy") as f:
        keys = list(f.keys())
        for k in keys:
            try:
                out[k] = np.asarray(f.get_tensor(k), dtype=np.float32)
            except TypeError:  # bfloat16: numpy has no such dtype; read it through JAX instead
                break
    if len(out) < len(keys):
        with safe_open(str(path), framework="flax") as f:
            for k in keys[len(out):]:
                out[k] = np.asarray(f.get_tensor(k).astype("float32"))
    return out


def gpt2_params(tensors: dict[str, np.ndarray], n_layer: int) -> dict[str, Any]:
    """HF GPT-2 state dict (names with or without the `transformer.` prefix) -> jaxprune param tree."""
    t = {k.removeprefix("transformer."): v for k, v in tensors.items()}

    def get(name: str) -> np.ndarray:
        if name not in t:
            raise KeyError(f"checkpoint is missing tensor {name!r}")
        return t[name]

    params: dict[str, Any] = {"wte": {"embedding": get("wte.weight")}, "wpe": {"embedding": get("wpe.weight")},
                              "ln_f": {"scale": get("ln_f.weight"), "bias": get("ln_f.bias")}}
    for i in range(n_layer):
        p = f"h.{i}."
        params[f"h_{i}"] = {
            "ln_1": {"scale": get(p + "ln_1.weight"), "bias": get(p + "ln_1.bias")},
            "attn": {"c_attn": {"kernel": get(p + "attn.c_attn.weight"), "bias": get(p + "attn.c_attn.bias")},
                     "c_proj": {"kernel": get(p + "attn.c_proj.weight"), "bias": get(p + "attn.c_proj.bias")}},
            "ln_2": {"scale": get(p + "ln_2.weight"), "bias": get(p + "ln_2.bias")},
            "mlp": {"c_fc": {"kernel": get(p + "mlp.c_fc.weight"), "bias": get(p + "mlp.c_fc.bias")},
                    "c_proj": {"kernel": get(p + "mlp.c_proj.weight"), "bias": get(p + "mlp.c_proj.bias")}},
        }
    if "lm_head.weight" in t and not np.array_equal(t["lm_head.weight"], t["wte.weight"]):
        raise ValueError("checkpoint has an lm_head that differs from wte; jaxprune's GPT-2 ties them")
    return params


def load_hf_gpt2(name_or_path: str | os.PathLike, **overrides: Any) -> tuple[dict[str, Any], ModelConfig]:
    """(params, ModelConfig) of a HF GPT-2 checkpoint directory (or hub id when online)."""
    path = resolve_checkpoint(name_or_path)
    cfg = gpt2_model_config(read_hf_config(path), **overrides)
    return gpt2_params(read_safetensors(_safetensors_file(path)), cfg.n_layer), cfg


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------
def byte_level_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], special: list[str],
                   add_prefix_space: bool = False) -> "tokenizers.Tokenizer":  # noqa: F821
    """GPT-2-style byte-level BPE from a vocab and merge list; `special` tokens are never split."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if special:
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    return tok


def load_hf_tokenizer(name_or_path: str | os.PathLike) -> "tokenizers.Tokenizer":  # noqa: F821
    """tokenizer.json if present, else vocab.json + merges.txt as a byte-level BPE (GPT-2's)."""
    from tokenizers import Tokenizer

    path = resolve_checkpoint(name_or_path)
    if (path / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(path / "tokenizer.json"))
    vf, mf = path / "vocab.json", path / "merges.txt"
    if not (vf.is_file() and mf.is_file()):
        raise FileNotFoundError(f"{str(path)!r} has neither tokenizer.json nor vocab.json + merges.txt")
    vocab = json.loads(vf.read_text(encoding="utf-8"))
    merges = []
    for line in mf.read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        a, b = line.split(" ")
        merges.append((a, b))
    special = [s for s in ("<|endoftext|>",) if s in vocab]
    return byte_level_bpe(vocab, merges, special)


# ---------------------------------------------------------------------------
# LLaMA-style checkpoints (LlamaForCausalLM, e.g. SmolLM2), same rules
# ---------------------------------------------------------------------------
def llama_model_config(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """ModelConfig of a HF LLaMA config.json."""
    if hf.get("model_type") != "llama":
        raise ValueError(f"expected model_type 'llama', got {hf.get('model_type')!r}")
    e, h = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim", e // h) != e // h:
        raise ValueError(f"head_dim={hf['head_dim']} != hidden_size/num_attention_heads={e // h} is not supported")
    if hf.get("rope_scaling") or hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("rope_scaling, attention_bias and mlp_bias are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf.get('hidden_act')!r} (SwiGLU uses silu)")
    theta = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    fields = dict(arch="llama", vocab_size=hf["vocab_size"], max_len=hf["max_position_embeddings"],
                  n_layer=hf["num_hidden_layers"], d_model=e, n_head=h,
                  n_kv_head=hf.get("num_key_value_heads") or h, d_ff=hf["intermediate_size"],
                  norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
                  tie_embeddings=bool(hf.get("tie_word_embeddings", True)))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**fields)


def llama_params(tensors: dict[str, np.ndarray], n_layer: int, tie_embeddings: bool) -> dict[str, Any]:
    """HF LLaMA state dict (torch Linear weights are (out, in): transposed here) -> jaxprune param tree."""
    t = {k.removeprefix("model."): v for k, v in tensors.items()}

    def get(name: str) -> np.ndarray:
        if name not in t:
            raise KeyError(f"checkpoint is missing tensor {name!r}")
        return t[name]

    def dense(name: str) -> dict[str, np.ndarray]:
        return {"kernel": np.ascontiguousarray(get(name + ".weight").T)}

    params: dict[str, Any] = {"wte": {"embedding": get("embed_tokens.weight")}, "ln_f": {"scale": get("norm.weight")}}
    for i in range(n_layer):
        p = f"layers.{i}."
        params[f"h_{i}"] = {
            "ln_1": {"scale": get(p + "input_layernorm.weight")},
            "attn": {n: dense(p + "self_attn." + n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")},
            "ln_2": {"scale": get(p + "post_attention_layernorm.weight")},
            "mlp": {n: dense(p + "mlp." + n) for n in ("gate_proj", "up_proj", "down_proj")},
        }
    if not tie_embeddings:
        params["lm_head"] = dense("lm_head")
    return params


def load_hf_checkpoint(name_or_path: str | os.PathLike, **overrides: Any) -> tuple[dict[str, Any], ModelConfig]:
    """(params, ModelConfig) of a HF GPT-2 or LLaMA safetensors checkpoint, by config.json's model_type."""
    path = resolve_checkpoint(name_or_path)
    hf = read_hf_config(path)
    if hf.get("model_type") == "llama":
        cfg = llama_model_config(hf, **overrides)
        return llama_params(read_safetensors(_safetensors_file(path)), cfg.n_layer, cfg.tie_embeddings), cfg
    cfg = gpt2_model_config(hf, **overrides)
    return gpt2_params(read_safetensors(_safetensors_file(path)), cfg.n_layer), cfg


def hf_model_config(name_or_path: str | os.PathLike, **overrides: Any) -> ModelConfig:
    """ModelConfig from a checkpoint's config.json (GPT-2 or LLaMA)."""
    hf = read_hf_config(resolve_checkpoint(name_or_path))
    return (llama_model_config if hf.get("model_type") == "llama" else gpt2_model_config)(hf, **overrides)
