"""Model definitions, presets and weight importers."""

from jaxprune.models.presets import ModelConfig, get_preset, model_config_from_preset, param_count, preset_names
from jaxprune.models.pretrained import load_pretrained, load_pretrained_tokenizer, pretrained_model_config
from jaxprune.models.transformer import Transformer, build_model, init_params, logical_axes

__all__ = ["ModelConfig", "Transformer", "build_model", "get_preset", "init_params", "load_pretrained",
           "load_pretrained_tokenizer", "logical_axes", "model_config_from_preset", "param_count", "preset_names",
           "pretrained_model_config"]
