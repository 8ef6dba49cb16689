"""Pretrained weights and tokenizers for `model.init` = hf (hf_gpt2 is its old name) or gguf.

    check_pretrained(config, model_cfg)                # headers only: fails before any compute
    params = load_pretrained(config, model_cfg, shardings)   # checked against model_cfg, streamed into shardings
    tok = load_pretrained_tokenizer(config)
    cfg = pretrained_model_config(config)              # the checkpoint's own architecture

`check_params` compares every imported array with the shapes `model_cfg` implies and
names the mismatch (and the preset the file's own config matches), so a config that
says `gpt2` but points at gpt2-medium fails with one clear line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.models.presets import PRESETS, ModelConfig
from jaxprune.models.transformer import Transformer
from jaxprune.models.trees import flatten

INITS = ("hf", "hf_gpt2", "gguf")
HF_INITS = ("hf", "hf_gpt2")
_ARCH_FIELDS = ("arch", "vocab_size", "n_layer", "d_model", "n_head", "n_kv_head", "d_ff", "tie_embeddings")


def expected_shapes(model_cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """'h_0/attn/c_attn/kernel' -> shape, for every parameter of `model_cfg` (nothing allocated)."""
    model = Transformer(model_cfg)
    tokens = jax.ShapeDtypeStruct((1, min(8, model_cfg.max_len)), jnp.int32)
    abstract = jax.eval_shape(lambda r: model.init(r, tokens), jax.ShapeDtypeStruct((2,), jnp.uint32))["params"]
    import flax.linen as nn
    return {k: tuple(v.shape) for k, v in flatten(nn.meta.unbox(abstract)).items()}


def matching_preset(cfg: ModelConfig) -> str | None:
    """Name of the preset with the same architecture as `cfg` (context length ignored), if any."""
    defaults = ModelConfig()
    for name, fields in PRESETS.items():
        if all(fields.get(f, getattr(defaults, f)) == getattr(cfg, f) for f in _ARCH_FIELDS
               if f != "n_kv_head") and (fields.get("n_kv_head") or fields["n_head"]) == cfg.kv_heads:
            return name
    return None


def fit_positions(params: dict[str, Any], model_cfg: ModelConfig) -> dict[str, Any]:
    """Keeps the first model_cfg.max_len rows of a learned position table (shorter context than the file)."""
    wpe = params.get("wpe", {}).get("embedding")
    if wpe is not None and wpe.shape[0] > model_cfg.max_len:
        params = dict(params, wpe={"embedding": wpe[: model_cfg.max_len]})
    return params


def check_params(params: Any, model_cfg: ModelConfig, source: str = "checkpoint",
                 file_cfg: ModelConfig | None = None) -> None:
    """Raises ValueError naming every parameter whose presence or shape disagrees with `model_cfg`."""
    want, got = expected_shapes(model_cfg), {k: tuple(np.shape(v)) for k, v in flatten(params).items()}
    problems = [f"{k}: missing from {source}" for k in sorted(want.keys() - got.keys())]
    problems += [f"{k}: in {source} but not in the model" for k in sorted(got.keys() - want.keys())]
    problems += [f"{k}: {source} has {got[k]}, model expects {want[k]}" for k in sorted(want.keys() & got.keys())
                 if got[k] != want[k]]
    if problems:
        hint = _mismatch_hint(file_cfg, model_cfg) if file_cfg is not None else ""
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise ValueError(f"{source} does not match the configured model ({len(problems)} problems): "
                         + "; ".join(shown) + hint)


def pretrained_model_config(config: Any, **overrides: Any) -> ModelConfig:
    """ModelConfig from the checkpoint's own metadata (HF config.json or GGUF keys), without loading weights."""
    init, path = config.model.init, config.model.init_path
    if init in HF_INITS:
        from jaxprune.models import import_hf
        return import_hf.hf_model_config(path, **overrides)
    if init == "gguf":
        from jaxprune.models import import_gguf
        return import_gguf.gguf_model_config(import_gguf.open_gguf(path), **overrides)
    raise ValueError(f"model.init={init!r} has no checkpoint config; expected one of {INITS}")


def _check_architecture(file_cfg: ModelConfig, model_cfg: ModelConfig, source: str) -> None:
    """Fields that shapes cannot reveal (norm epsilon, rotary base and scaling, attention window) must agree."""
    if file_cfg.arch == model_cfg.arch and file_cfg.tie_embeddings != model_cfg.tie_embeddings:
        raise ValueError(f"{source} has tie_embeddings={file_cfg.tie_embeddings}, the model "
                         f"tie_embeddings={model_cfg.tie_embeddings}")
    fields = ("norm_eps",) + (("rope_theta", "rope_scaling", "sliding_window") if model_cfg.arch == "llama" else ())
    for f in fields:
        a, b = getattr(file_cfg, f), getattr(model_cfg, f)
        same = np.isclose(a, b, rtol=1e-6, atol=0) if isinstance(a, float) and isinstance(b, float) else a == b
        if not same:
            raise ValueError(f"{source} has {f}={a}, the configured model {f}={b}; use model.preset='auto' "
                             f"(the file's config: {dataclasses.asdict(file_cfg)})")


def check_pretrained(config: Any, model_cfg: ModelConfig) -> None:
    """The errors `load_pretrained` would raise for a HF checkpoint, from its config.json and headers only."""
    init, path = config.model.init, config.model.init_path
    if init not in HF_INITS:
        return
    from jaxprune.models import import_hf
    source = f"{init} checkpoint {path!r}"
    _check_architecture(import_hf.hf_model_config(path), model_cfg, source)
    import_hf.check_checkpoint(path, model_cfg)


def load_pretrained(config: Any, model_cfg: ModelConfig, shardings: Any = None,
                    progress: bool = False) -> dict[str, Any]:
    """Float32 params for `model_cfg` from config.model.init_path; raises ValueError if shapes disagree.

    shardings (a pytree of Shardings like the params): HF tensors are read straight into their device
    shards, one tensor at a time; GGUF files are dequantised on the host, then placed.
    A learned position table longer than model_cfg.max_len is cut to max_len (a shorter context than the
    checkpoint's is fine); everything else must match exactly.
    """
    init, path = config.model.init, config.model.init_path
    source = f"{init} file {path!r}"
    if init in HF_INITS:
        from jaxprune.models import import_hf
        file_cfg = import_hf.hf_model_config(path)
        _check_architecture(file_cfg, model_cfg, source)
        try:
            params, _ = import_hf.load_hf(path, model_cfg, shardings=shardings, progress=progress)
        except ValueError as e:  # a shape or name mismatch: say which preset the file's config matches
            check_params_hint = _mismatch_hint(file_cfg, model_cfg)
            raise ValueError(f"{e}{check_params_hint}") from None
        return params
    if init == "gguf":
        from jaxprune.models import import_gguf
        params, file_cfg = import_gguf.load_gguf(path, progress=progress)
    else:
        raise ValueError(f"load_pretrained handles model.init in {INITS}, got {init!r}")
    params = fit_positions(params, model_cfg)
    _check_architecture(file_cfg, model_cfg, source)
    check_params(params, model_cfg, source, file_cfg)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    return params if shardings is None else jax.device_put(params, shardings)


def _mismatch_hint(file_cfg: ModelConfig, model_cfg: ModelConfig) -> str:
    preset = matching_preset(file_cfg)
    diff = ", ".join(f"{f}={getattr(file_cfg, f)} (model: {getattr(model_cfg, f)})" for f in _ARCH_FIELDS
                     if getattr(file_cfg, f) != getattr(model_cfg, f))
    if not diff:
        return ""
    return f"; the file's own config has {diff}; use " + (f"model.preset={preset!r} or " if preset else "") + \
        "model.preset='auto'"


def load_pretrained_tokenizer(config: Any) -> "tokenizers.Tokenizer":  # noqa: F821
    """The checkpoint's tokenizer: HF tokenizer.json or vocab.json + merges.txt; GGUF from its metadata."""
    init, path = config.model.init, config.model.init_path
    if init in HF_INITS:
        from jaxprune.models import import_hf
        return import_hf.load_hf_tokenizer(path)
    if init == "gguf":
        from jaxprune.models import import_gguf
        return import_gguf.gguf_tokenizer(import_gguf.open_gguf(path))
    raise ValueError(f"model.init={init!r} has no pretrained tokenizer; expected one of {INITS}")
