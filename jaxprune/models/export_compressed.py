"""Export a pruned jaxprune model in compressed-tensors' sparse formats (llm-compressor / vLLM).

    save_compressed("out/", params, cfg, tokenizer, masks=masks)          # sparse-bitmask
    save_compressed("out/", params, cfg, tokenizer, masks=masks, nm=(2, 4))   # sparse-24-bitmask

The directory is the `export_hf` one (config.json, tokenizer, safetensors shards) with every
pruned linear weight replaced by the library's compressed form and config.json's
`quantization_config.sparsity_config` written by the library (`ModelCompressor.update_config`).
Compression itself is the library's: `BitmaskCompressor` (a packed bitmask, the nonzero values and
row offsets) for unstructured masks, `Sparse24BitMaskCompressor` for 2:4 (vLLM's sparse
kernels on Hopper). Needs the `compressed` extra (compressed-tensors < 0.15, the last versions
that ship sparse compressors).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxprune.models import export_hf
from jaxprune.models import hf as hf_names
from jaxprune.models.presets import ModelConfig
from jaxprune.models.trees import flatten


def _library() -> Any:
    try:
        from compressed_tensors.compressors import ModelCompressor  # noqa: F401
        from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig  # noqa: F401
    except ImportError as e:
        raise ValueError("--format=compressed needs compressed-tensors < 0.15 with its sparse compressors "
                         "(pip install -e '.[compressed]' in an environment of its own; it needs transformers < 5): "
                         f"{e}") from None
    import compressed_tensors
    return compressed_tensors


def is_24(w: np.ndarray) -> bool:
    """Every group of 4 consecutive inputs of each output row (torch (out, in) layout) has <= 2 nonzeros."""
    if w.ndim != 2 or w.shape[1] % 4:
        return False
    return bool(np.all(np.count_nonzero(w.reshape(w.shape[0], -1, 4), axis=-1) <= 2))


def save_compressed(out_dir: str | os.PathLike, params: Any, cfg: ModelConfig, tokenizer: Any = None,
                    masks: Any = None, nm: tuple[int, int] | None = None,
                    max_shard_size: int | str = export_hf.DEFAULT_SHARD_SIZE, progress: bool = False) -> list[Path]:
    """Writes the compressed directory (see the module docstring); returns the files written.

    nm=(2, 4) selects sparse-24-bitmask and checks that every pruned weight really is 2:4 along its inputs.
    """
    _library()
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import BitmaskConfig, Sparse24BitMaskConfig

    if masks is None:
        raise ValueError("compressed export needs the masks of a pruned model (a dense stage has nothing to compress)")
    if nm not in (None, (2, 4)):
        raise ValueError(f"compressed-tensors has a sparse format for 2:4 only, got {nm[0]}:{nm[1]}")
    hf_config = hf_names.hf_config_from_model(cfg)
    names = hf_names.tensor_map(cfg)
    tensors = export_hf.state_dict(params, cfg, masks)
    targets = sorted(names[p].name for p in flatten(masks))
    if nm == (2, 4):
        bad = [k for k in targets if not is_24(tensors[k])]
        if bad:
            raise ValueError(f"{bad[0]} is not 2:4 sparse along its inputs; export it with nm=None (sparse-bitmask)")
    pruned = sum(int(np.count_nonzero(tensors[k] == 0)) for k in targets)
    total = sum(tensors[k].size for k in targets)
    kw = dict(global_sparsity=pruned / max(total, 1), targets=sorted({k.removesuffix(".weight") for k in targets}))
    sparsity_config = (Sparse24BitMaskConfig(sparsity_structure="2:4", **kw) if nm == (2, 4)
                       else BitmaskConfig(sparsity_structure="unstructured", **kw))
    compressor = ModelCompressor(sparsity_config=sparsity_config)
    dense = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}  # writable copies for torch
    compressed = compressor.sparsity_compressor.compress(
        dense, compression_targets={k.removesuffix(".weight") for k in targets}, show_progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = export_hf.write_safetensors(out, {k: v.contiguous() for k, v in compressed.items()}, max_shard_size,
                                        progress)
    files += export_hf.write_configs(out, hf_config, tokenizer, cfg.max_len)
    compressor.update_config(str(out))  # the library writes quantization_config.sparsity_config into config.json
    return files


def decompress(out_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The dense state dict of a compressed directory, decompressed by the library (for checks)."""
    _library()
    import json

    from compressed_tensors.compressors import ModelCompressor

    config = json.loads((Path(out_dir) / "config.json").read_text())
    compressor = ModelCompressor.from_compression_config(config["quantization_config"])
    return {k: v.float().numpy() for k, v in compressor.sparsity_compressor.decompress(str(out_dir))}
