"""Export a jaxprune model as a Hugging Face directory that transformers loads.

    save_hf("out/", params, cfg, tokenizer, masks=masks)
    AutoModelForCausalLM.from_pretrained("out/"); AutoTokenizer.from_pretrained("out/")

Writes `config.json` (the class the model came from: GPT-2, LLaMA, Mistral, Qwen2; see
`jaxprune.models.hf`), `generation_config.json`, `tokenizer.json` + `tokenizer_config.json`,
and float32 safetensors, split into shards with `model.safetensors.index.json` above
`max_shard_size`. Masks are applied first, so pruned weights are exactly 0.0 in the files.
Structurally compacted models keep their smaller widths when every layer has the same
width (transformers has one `intermediate_size` / head count per model); otherwise the
export fails with a one-line reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxprune.models import hf as hf_names
from jaxprune.models.presets import ModelConfig
from jaxprune.models.trees import flatten

DEFAULT_SHARD_SIZE = "2GB"


def host_array(x: Any) -> np.ndarray:
    """A float32 numpy copy of a (possibly sharded) array; gathers across processes when needed."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x), dtype=np.float32)


def masked_flat(params: Any, masks: Any = None) -> dict[str, np.ndarray]:
    """'h_0/attn/c_attn/kernel' -> float32 array with the mask applied (pruned entries exactly 0.0)."""
    flat_m = flatten(masks) if masks is not None else {}
    out = {}
    for key, leaf in flatten(params).items():
        a = host_array(leaf)
        m = flat_m.get(key)
        if m is not None:
            a = np.where(np.asarray(jax.device_get(m), bool), a, np.float32(0.0))
        out[key] = a
    return out


def state_dict(params: Any, cfg: ModelConfig, masks: Any = None) -> dict[str, np.ndarray]:
    """The HF state dict (key -> contiguous float32 array) of jaxprune params, masks applied."""
    flat = masked_flat(params, masks)
    names = hf_names.tensor_map(cfg)
    missing = sorted(names.keys() - flat.keys())
    if missing:
        raise ValueError(f"params lack {missing[0]} (and {len(missing) - 1} more) for this model config")
    unexpected = sorted(flat.keys() - names.keys())
    if unexpected:
        raise ValueError(f"params hold {unexpected[0]}, which {cfg.hf_architecture or cfg.arch} has no tensor for")
    return {names[p].name: np.ascontiguousarray(a.T if names[p].transposed else a) for p, a in flat.items()}


def tokenizer_files(tokenizer: Any, out: Path, max_len: int) -> dict[str, Any]:
    """Writes tokenizer.json + tokenizer_config.json; returns the special token ids for the configs."""
    tokenizer.save(str(out / "tokenizer.json"))
    specials = [t for t in tokenizer.get_added_tokens_decoder().values() if t.special]
    names = [t.content for t in specials]

    def pick(*candidates: str) -> str | None:
        return next((c for c in candidates if c in names), names[0] if names else None)

    bos = pick("<|endoftext|>", "<s>", "<|begin_of_text|>", "<|im_start|>")
    eos = pick("<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>")
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len, "clean_up_tokenization_spaces": False}
    ids = {}
    if bos is not None:
        cfg["bos_token"], ids["bos_token_id"] = bos, tokenizer.token_to_id(bos)
    if eos is not None:
        cfg["eos_token"], ids["eos_token_id"] = eos, tokenizer.token_to_id(eos)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return ids


def write_safetensors(out: Path, tensors: dict[str, Any], max_shard_size: int | str = DEFAULT_SHARD_SIZE,
                      progress: bool = False) -> list[Path]:
    """Writes `tensors` (numpy arrays, or torch tensors) as model.safetensors, or as shards plus
    model.safetensors.index.json when they exceed `max_shard_size`; returns the files written."""
    from huggingface_hub import split_state_dict_into_shards_factory
    from tqdm.auto import tqdm

    if all(isinstance(t, np.ndarray) for t in tensors.values()):
        from safetensors.numpy import save_file
        nbytes = lambda a: a.nbytes  # noqa: E731
    else:
        from safetensors.torch import save_file
        nbytes = lambda a: a.numel() * a.element_size()  # noqa: E731
    split = split_state_dict_into_shards_factory(tensors, get_storage_size=nbytes,
                                                 filename_pattern="model{suffix}.safetensors",
                                                 max_shard_size=max_shard_size)
    written = []
    for filename, keys in tqdm(split.filename_to_tensors.items(), desc=f"writing {out.name}", unit="shard",
                               disable=not progress, leave=False):
        save_file({k: tensors[k] for k in keys}, str(out / filename), metadata={"format": "pt"})
        written.append(out / filename)
    if split.is_sharded:
        index = {"metadata": {"total_size": int(sum(nbytes(a) for a in tensors.values()))},
                 "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        written.append(out / "model.safetensors.index.json")
    return written


def write_configs(out: Path, hf_config: dict[str, Any], tokenizer: Any, max_len: int) -> list[Path]:
    """config.json, generation_config.json and (with a tokenizer) its two files; returns the files written."""
    ids = tokenizer_files(tokenizer, out, max_len) if tokenizer is not None else {}
    (out / "config.json").write_text(json.dumps({**hf_config, **ids}, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"_from_model_config": True, **ids}, indent=2) + "\n")
    files = [out / "config.json", out / "generation_config.json"]
    return files + ([out / "tokenizer.json", out / "tokenizer_config.json"] if tokenizer is not None else [])


def save_hf(out_dir: str | os.PathLike, params: Any, cfg: ModelConfig, tokenizer: Any = None, masks: Any = None,
            max_shard_size: int | str = DEFAULT_SHARD_SIZE, progress: bool = False) -> list[Path]:
    """Writes a transformers-loadable directory; returns the paths written. See the module docstring."""
    hf_config = hf_names.hf_config_from_model(cfg)  # ValueError before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = state_dict(params, cfg, masks)
    return write_safetensors(out, tensors, max_shard_size, progress) + \
        write_configs(out, hf_config, tokenizer, cfg.max_len)
