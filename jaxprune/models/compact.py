"""Structured pruning + compaction on the model side: masks -> a smaller ModelConfig and params.

The pytree surgery lives in :mod:`jaxprune.sparsity.compact`; this module adds the
model config with per-block widths (``ModelConfig.layer_d_ff`` / ``layer_n_head``), so
the compacted model is an ordinary jaxprune model: saved and restored as a normal
checkpoint, fine-tuned and evaluated like any other.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxprune import sparsity
from jaxprune.models.presets import ModelConfig
from jaxprune.sparsity.compact import Widths, compact_gpt2


def compact_config(cfg: ModelConfig, widths: Widths) -> ModelConfig:
    """``cfg`` with per-block MLP widths and head counts (head_dim unchanged)."""
    return dataclasses.replace(cfg, layer_d_ff=tuple(widths.d_ff), layer_n_head=tuple(widths.n_head))


def compact_model(
    cfg: ModelConfig, params: Any, masks: Any, *, neurons: bool = True, heads: bool = True
) -> tuple[ModelConfig, Any]:
    """The compacted (config, params) of a structurally pruned GPT-2-style model.

    Its logits equal those of ``params`` with ``masks`` applied (float rounding aside).
    """
    if cfg.arch != "gpt2":
        raise ValueError(f"compaction supports arch='gpt2' only, got {cfg.arch!r}")
    new, widths = compact_gpt2(params, masks, cfg.head_dim, neurons=neurons, heads=heads)
    return compact_config(cfg, widths), new


def prune_structured(
    cfg: ModelConfig, params: Any, masks: Any, rate: float, *, neurons: bool = True, heads: bool = True,
    scope: str = "layerwise", scores: Any = "magnitude",
) -> Any:
    """Masks with a fraction ``rate`` of MLP neurons and/or attention heads pruned (by L1 weight norm).

    ``scope="layerwise"`` prunes every block at ``rate`` (uniform widths);
    ``"global"`` ranks groups across blocks (non-uniform widths).
    """
    if neurons:
        masks = sparsity.prune(params, masks, rate, pattern="neuron", scope=scope, scores=scores,
                               groups=sparsity.gpt2_neuron_groups(params))
    if heads:
        masks = sparsity.prune(params, masks, rate, pattern="head", scope=scope, scores=scores,
                               groups=sparsity.gpt2_head_groups(params, head_dim=cfg.head_dim))
    return masks
