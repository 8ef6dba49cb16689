"""The Hugging Face side of jaxprune's models: config.json <-> ModelConfig and the tensor name map.

Shared by the importer (`import_hf.py`) and the exporter (`export_hf.py`), so a name or a config
field is mapped in one place only. Supported `architectures` (config.json):

    GPT2LMHeadModel      arch gpt2   Conv1D weights are already (in, out): copied as they are
    LlamaForCausalLM     arch llama  LLaMA 2/3 (rope_scaling llama3), SmolLM, TinyLlama; GQA; attention/MLP biases
    MistralForCausalLM   arch llama  + sliding_window
    Qwen2ForCausalLM     arch llama  + q/k/v biases

torch `Linear` weights are (out, in) and jaxprune kernels (in, out): those are transposed.

    >>> cfg = model_config_from_hf(json.load(open("llama/config.json")))     # doctest: +SKIP
    >>> tensor_map(cfg)["h_0/attn/q_proj/kernel"]                            # doctest: +SKIP
    TensorName(name='model.layers.0.self_attn.q_proj.weight', transposed=True)
"""

from __future__ import annotations

from typing import Any, NamedTuple

from jaxprune.models.presets import ROPE_TYPES, ModelConfig

# HF class -> (model_type, jaxprune arch).
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "GPT2LMHeadModel": ("gpt2", "gpt2"),
    "LlamaForCausalLM": ("llama", "llama"),
    "MistralForCausalLM": ("mistral", "llama"),
    "Qwen2ForCausalLM": ("qwen2", "llama"),
}
_BY_MODEL_TYPE = {mt: cls for cls, (mt, _) in ARCHITECTURES.items()}


class TensorName(NamedTuple):
    name: str  # HF state-dict key as save_pretrained writes it
    transposed: bool  # HF stores the transpose of jaxprune's array


def architecture(hf: dict[str, Any]) -> str:
    """The HF class of a config.json (`architectures[0]`, else from `model_type`); ValueError if unsupported."""
    archs = hf.get("architectures") or []
    name = archs[0] if archs else _BY_MODEL_TYPE.get(hf.get("model_type", ""), "")
    if name not in ARCHITECTURES:
        got = name or f"model_type={hf.get('model_type')!r}"
        raise ValueError(f"unsupported architecture {got}; jaxprune imports {', '.join(ARCHITECTURES)}")
    return name


def _rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling or None) from either transformers 4 (rope_theta + rope_scaling) or 5
    (rope_parameters) config layouts."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = dict(hf.get("rope_scaling") or params)
    theta = hf.get("rope_theta") or params.get("rope_theta") or 10000.0
    kind = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("rope_theta", None)
    if kind not in ROPE_TYPES:
        raise ValueError(f"rope_scaling type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if kind == "default":
        return float(theta), None
    return float(theta), dict(scaling, rope_type=kind)


def model_config_from_hf(hf: dict[str, Any], **overrides: Any) -> ModelConfig:
    """ModelConfig of a HF config.json dict; `overrides` that are not None win (max_len, dtype, ...)."""
    cls = architecture(hf)
    model_type, arch = ARCHITECTURES[cls]
    if arch == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"unsupported activation_function {act!r}: jaxprune's GPT-2 uses tanh-approximated GELU")
        e = hf["n_embd"]
        fields = dict(arch="gpt2", vocab_size=hf["vocab_size"], max_len=hf["n_positions"], n_layer=hf["n_layer"],
                      d_model=e, n_head=hf["n_head"], d_ff=hf.get("n_inner") or 4 * e,
                      norm_eps=hf.get("layer_norm_epsilon", 1e-5), tie_embeddings=True)
    else:
        if hf.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {hf.get('hidden_act')!r} (SwiGLU uses silu)")
        e, h = hf["hidden_size"], hf["num_attention_heads"]
        theta, scaling = _rope(hf)
        window = hf.get("sliding_window") if model_type == "mistral" else None
        if model_type == "qwen2" and hf.get("use_sliding_window"):
            raise ValueError("Qwen2 with use_sliding_window=True (windows on some layers only) is not supported")
        bias = bool(hf.get("attention_bias", False))
        fields = dict(arch="llama", vocab_size=hf["vocab_size"], max_len=hf["max_position_embeddings"],
                      n_layer=hf["num_hidden_layers"], d_model=e, n_head=h,
                      n_kv_head=hf.get("num_key_value_heads") or h, d_ff=hf["intermediate_size"],
                      norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=theta, rope_scaling=scaling,
                      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
                      d_head=(hf.get("head_dim") or e // h) if (hf.get("head_dim") or e // h) * h != e else None,
                      qkv_bias=model_type == "qwen2" or bias, out_bias=bias and model_type != "qwen2",
                      mlp_bias=bool(hf.get("mlp_bias", False)), sliding_window=window)
    fields["hf_architecture"] = cls
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**fields)


def hf_config_from_model(cfg: ModelConfig, **extra: Any) -> dict[str, Any]:
    """config.json for `cfg` (the class it came from, else GPT2LMHeadModel / LlamaForCausalLM).

    ValueError where transformers cannot express the model (per-layer widths of a compacted model,
    biases the class does not have).
    """
    cls = cfg.hf_architecture or ("GPT2LMHeadModel" if cfg.arch == "gpt2" else "LlamaForCausalLM")
    model_type, arch = ARCHITECTURES[cls]
    if arch != cfg.arch:
        raise ValueError(f"hf_architecture {cls} does not fit arch={cfg.arch!r}")
    widths = {"d_ff": cfg.layer_d_ff, "n_head": cfg.layer_n_head}
    for name, per_layer in widths.items():
        if per_layer is not None and len(set(per_layer)) > 1:
            raise ValueError(f"this compacted model has a different {name} per layer ({list(per_layer)}); "
                             f"{cls} has one {name} for all layers, so transformers cannot load it. Export it "
                             f"unstructured (masks only) or compact with the same width in every layer")
    d_ff = cfg.ff_of(0) if cfg.n_layer else cfg.d_ff
    n_head = cfg.heads_of(0) if cfg.n_layer else cfg.n_head
    if cfg.arch == "gpt2":
        if n_head * cfg.head_dim != cfg.d_model:
            raise ValueError(f"GPT2LMHeadModel needs n_head * head_dim == n_embd; this model has {n_head} heads "
                             f"of {cfg.head_dim} and d_model {cfg.d_model}")
        out = dict(architectures=[cls], model_type=model_type, vocab_size=cfg.vocab_size, n_positions=cfg.max_len,
                   n_embd=cfg.d_model, n_layer=cfg.n_layer, n_head=n_head, n_inner=d_ff,
                   activation_function="gelu_new", layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0,
                   embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
    else:
        if model_type == "qwen2" and (cfg.out_bias or cfg.mlp_bias or not cfg.qkv_bias):
            raise ValueError("Qwen2ForCausalLM has q/k/v biases and no o_proj/MLP biases; this model differs")
        if model_type != "qwen2" and cfg.qkv_bias != cfg.out_bias:
            raise ValueError(f"{cls} has biases on all of q/k/v/o or none (attention_bias); this model has "
                             f"qkv_bias={cfg.qkv_bias}, out_bias={cfg.out_bias}")
        if model_type == "mistral" and cfg.mlp_bias:
            raise ValueError("MistralForCausalLM has no MLP biases")
        rope: dict[str, Any] = dict(cfg.rope_scaling or {"rope_type": "default"})
        rope["rope_theta"] = cfg.rope_theta
        out = dict(architectures=[cls], model_type=model_type, vocab_size=cfg.vocab_size,
                   max_position_embeddings=cfg.max_len, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
                   num_attention_heads=n_head, num_key_value_heads=cfg.kv_heads, head_dim=cfg.head_dim,
                   intermediate_size=d_ff, hidden_act="silu", rms_norm_eps=cfg.norm_eps,
                   rope_theta=cfg.rope_theta, rope_parameters=rope,
                   tie_word_embeddings=cfg.tie_embeddings, attention_dropout=0.0)
        if model_type == "llama":
            out.update(attention_bias=cfg.qkv_bias, mlp_bias=cfg.mlp_bias)
        elif model_type == "mistral":
            out.update(sliding_window=cfg.sliding_window)
        else:
            out.update(use_sliding_window=False, sliding_window=None)
    out.update(torch_dtype="float32", dtype="float32", **extra)
    return out


def tensor_map(cfg: ModelConfig) -> dict[str, TensorName]:
    """jaxprune parameter path ('h_0/attn/c_attn/kernel') -> HF state-dict key, for every parameter of `cfg`."""
    out: dict[str, TensorName] = {}

    def put(path: str, name: str, transposed: bool = False) -> None:
        out[path] = TensorName(name, transposed)

    if cfg.arch == "gpt2":
        put("wte/embedding", "transformer.wte.weight")
        put("wpe/embedding", "transformer.wpe.weight")
        put("ln_f/scale", "transformer.ln_f.weight")
        put("ln_f/bias", "transformer.ln_f.bias")
        for i in range(cfg.n_layer):
            for mod in ("ln_1", "ln_2"):
                put(f"h_{i}/{mod}/scale", f"transformer.h.{i}.{mod}.weight")
                put(f"h_{i}/{mod}/bias", f"transformer.h.{i}.{mod}.bias")
            for mod in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
                dotted = mod.replace("/", ".")
                put(f"h_{i}/{mod}/kernel", f"transformer.h.{i}.{dotted}.weight")  # Conv1D: (in, out)
                put(f"h_{i}/{mod}/bias", f"transformer.h.{i}.{dotted}.bias")
        return out
    put("wte/embedding", "model.embed_tokens.weight")
    put("ln_f/scale", "model.norm.weight")
    if not cfg.tie_embeddings:
        put("lm_head/kernel", "lm_head.weight", True)
    linears = {"q_proj": ("attn", "self_attn", cfg.qkv_bias), "k_proj": ("attn", "self_attn", cfg.qkv_bias),
               "v_proj": ("attn", "self_attn", cfg.qkv_bias), "o_proj": ("attn", "self_attn", cfg.out_bias),
               "gate_proj": ("mlp", "mlp", cfg.mlp_bias), "up_proj": ("mlp", "mlp", cfg.mlp_bias),
               "down_proj": ("mlp", "mlp", cfg.mlp_bias)}
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        put(f"h_{i}/ln_1/scale", p + "input_layernorm.weight")
        put(f"h_{i}/ln_2/scale", p + "post_attention_layernorm.weight")
        for name, (ours, theirs, bias) in linears.items():
            put(f"h_{i}/{ours}/{name}/kernel", f"{p}{theirs}.{name}.weight", True)
            if bias:
                put(f"h_{i}/{ours}/{name}/bias", f"{p}{theirs}.{name}.bias")
    return out


def checkpoint_prefixes(cfg: ModelConfig) -> tuple[str, ...]:
    """Prefixes a checkpoint may lack: the hub's original gpt2 files have no `transformer.`."""
    return ("transformer.",) if cfg.arch == "gpt2" else ("model.",)


# Tensors a checkpoint may hold that carry no parameters (buffers of older transformers versions).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")
