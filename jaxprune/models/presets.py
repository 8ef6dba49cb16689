"""Named model sizes: tiny CPU models, GPT-2, the GPT-3 family and SmolLM2.

A preset fixes the architecture's shape; `model.vocab_size` and `model.max_len`
may still be set in the config (None means "take the preset's value").
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Fields: arch, n_layer, d_model, n_head, d_ff, max_len, vocab_size, and for
# LLaMA-style models n_kv_head, rope_theta, tie_embeddings.
PRESETS: dict[str, dict[str, Any]] = {
    # Tiny models for CPUs and tests (vocab from the config's tokenizer).
    "femto": dict(n_layer=2, d_model=64, n_head=4, d_ff=256, max_len=64, vocab_size=512),
    "pico": dict(n_layer=2, d_model=128, n_head=4, d_ff=512, max_len=128, vocab_size=4096),
    "nano": dict(n_layer=4, d_model=192, n_head=6, d_ff=768, max_len=128, vocab_size=4096),
    "micro": dict(n_layer=6, d_model=256, n_head=8, d_ff=1024, max_len=256, vocab_size=8192),
    "mini": dict(n_layer=8, d_model=384, n_head=6, d_ff=1536, max_len=256, vocab_size=8192),
    # GPT-2 (Radford et al. 2019), context 1024, vocab 50257.
    "gpt2": dict(n_layer=12, d_model=768, n_head=12, d_ff=3072, max_len=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layer=24, d_model=1024, n_head=16, d_ff=4096, max_len=1024, vocab_size=50257),
    "gpt2-large": dict(n_layer=36, d_model=1280, n_head=20, d_ff=5120, max_len=1024, vocab_size=50257),
    "gpt2-xl": dict(n_layer=48, d_model=1600, n_head=25, d_ff=6400, max_len=1024, vocab_size=50257),
    # GPT-3 family (Brown et al. 2020, Table 2.1), context 2048, d_ff = 4 d_model.
    "gpt3-125m": dict(n_layer=12, d_model=768, n_head=12, d_ff=3072, max_len=2048, vocab_size=50257),
    "gpt3-350m": dict(n_layer=24, d_model=1024, n_head=16, d_ff=4096, max_len=2048, vocab_size=50257),
    "gpt3-760m": dict(n_layer=24, d_model=1536, n_head=16, d_ff=6144, max_len=2048, vocab_size=50257),
    "gpt3-1.3b": dict(n_layer=24, d_model=2048, n_head=24, d_ff=8192, max_len=2048, vocab_size=50257),
    "gpt3-2.7b": dict(n_layer=32, d_model=2560, n_head=32, d_ff=10240, max_len=2048, vocab_size=50257),
    "gpt3-6.7b": dict(n_layer=32, d_model=4096, n_head=32, d_ff=16384, max_len=2048, vocab_size=50257),
    # The paper's table prints d_model=5140 for 13B, which 40 heads of 128 do not
    # divide; 40 x 128 = 5120 is the width actually implied.
    "gpt3-13b": dict(n_layer=40, d_model=5120, n_head=40, d_ff=20480, max_len=2048, vocab_size=50257),
    "gpt3-175b": dict(n_layer=96, d_model=12288, n_head=96, d_ff=49152, max_len=2048, vocab_size=50257),
    # LLaMA-style models.
    "llama-pico": dict(arch="llama", n_layer=2, d_model=128, n_head=4, n_kv_head=2, d_ff=344, max_len=128,
                       vocab_size=4096, tie_embeddings=True),
    "smollm2-135m": dict(arch="llama", n_layer=30, d_model=576, n_head=9, n_kv_head=3, d_ff=1536,
                         max_len=2048, vocab_size=49152, rope_theta=100000.0, tie_embeddings=True,
                         norm_eps=1e-5),
}

# Aliases people type.
ALIASES = {"gpt2-124m": "gpt2", "gpt2-small": "gpt2", "gpt2-355m": "gpt2-medium",
           "gpt2-774m": "gpt2-large", "gpt2-1.5b": "gpt2-xl"}


ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Resolved architecture of a decoder-only Transformer."""

    arch: str = "gpt2"  # "gpt2" (LayerNorm, learned positions, GELU) or "llama" (RMSNorm, RoPE, SwiGLU)
    vocab_size: int = 512
    max_len: int = 64
    n_layer: int = 2
    d_model: int = 64
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention (llama); None = n_head
    d_ff: int = 256
    dropout: float = 0.0
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    dtype: str = "float32"  # compute dtype; params stay float32
    remat: bool = False
    attention_impl: str | None = None  # None lets XLA choose; "cudnn" on recent NVIDIA GPUs
    # Per-layer widths of structurally pruned, compacted models (None = uniform d_ff / n_head).
    # Head dim stays d_model // n_head, so layer i's attention is layer_n_head[i] * head_dim wide.
    layer_d_ff: tuple[int, ...] | None = None
    layer_n_head: tuple[int, ...] | None = None
    # LLaMA-family variants read from HF config.json (GPT-2 style ignores them).
    d_head: int | None = None  # attention head dimension; None = d_model // n_head
    qkv_bias: bool = False  # biases on q/k/v projections (Qwen2; LLaMA attention_bias=True)
    out_bias: bool = False  # bias on o_proj (LLaMA attention_bias=True)
    mlp_bias: bool = False  # biases on gate/up/down projections (LLaMA mlp_bias=True)
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # sorted (key, value) pairs, e.g. rope_type=llama3
    sliding_window: int | None = None  # attend to the last `sliding_window` positions only (Mistral)
    hf_architecture: str | None = None  # HF class the weights came from (e.g. Qwen2ForCausalLM), for export

    def __post_init__(self) -> None:
        for name in ("layer_d_ff", "layer_n_head"):
            v = getattr(self, name)
            if v is not None:
                v = tuple(int(x) for x in v)  # lists from JSON configs; tuples keep the config hashable
                object.__setattr__(self, name, v)
                if len(v) != self.n_layer or min(v) < 0:
                    raise ValueError(f"{name} must give one width >= 0 per layer ({self.n_layer}), got {v}")
        if self.layer_n_head is not None and self.arch == "llama":
            raise ValueError("layer_n_head is only supported for arch='gpt2'")
        if isinstance(self.rope_scaling, dict):  # JSON configs; sorted pairs keep the config hashable
            object.__setattr__(self, "rope_scaling", tuple(sorted(self.rope_scaling.items())))
        elif self.rope_scaling is not None:
            object.__setattr__(self, "rope_scaling", tuple(tuple(kv) for kv in self.rope_scaling))
        if self.rope_scaling is not None:
            kind = dict(self.rope_scaling).get("rope_type", "default")
            if kind not in ROPE_TYPES:
                raise ValueError(f"rope_scaling type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")

    @property
    def head_dim(self) -> int:
        return self.d_head or self.d_model // self.n_head

    def ff_of(self, layer: int) -> int:
        """MLP width of block `layer`."""
        return self.d_ff if self.layer_d_ff is None else self.layer_d_ff[layer]

    def heads_of(self, layer: int) -> int:
        """Number of attention heads of block `layer`."""
        return self.n_head if self.layer_n_head is None else self.layer_n_head[layer]

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head


def preset_names() -> list[str]:
    return sorted(PRESETS) + sorted(ALIASES)


def get_preset(name: str) -> dict[str, Any]:
    """Returns a copy of the preset's fields; raises ValueError for unknown names."""
    key = ALIASES.get(name, name)
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(preset_names())}")
    return dict(PRESETS[key])


def model_config_from_preset(name: str, **overrides: Any) -> ModelConfig:
    """Builds a ModelConfig from a preset; `overrides` that are None are ignored."""
    fields = get_preset(name)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(**fields)


def param_count(cfg: ModelConfig) -> int:
    """Number of parameters (embeddings included, tied head counted once)."""
    e, v, l = cfg.d_model, cfg.vocab_size, cfg.n_layer
    total = 0
    for i in range(l):
        f, a = cfg.ff_of(i), cfg.heads_of(i) * cfg.head_dim  # MLP width, attention width
        if cfg.arch == "gpt2":
            total += (e * 3 * a + 3 * a) + (a * e + e) + (e * f + f) + (f * e + e) + 4 * e
        else:
            kv = cfg.kv_heads * cfg.head_dim
            total += e * a + 2 * e * kv + a * e + 3 * e * f + 2 * e
            total += (a + 2 * kv) * cfg.qkv_bias + e * cfg.out_bias + (2 * f + e) * cfg.mlp_bias
    if cfg.arch == "gpt2":
        rest = v * e + cfg.max_len * e + 2 * e
    else:
        rest = v * e + e + (0 if cfg.tie_embeddings else v * e)
    return total + rest
