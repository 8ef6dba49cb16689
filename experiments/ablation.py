"""Ablations of the headline experiment, all starting from its trained dense model.

First run the headline (configs/gpt_lambada.py) so that runs/gpt_lambada/dense holds
the dense checkpoint; every ablation then loads it (model.init=checkpoint), with the
same tokenizer and token cache, and runs only its pruning stages and controls:

    python -m jaxprune.main --config=experiments/ablation.py:VARIANT --workdir=runs/ablation_VARIANT

VARIANT                 what it varies (headline: iterative 5 x 10 %, 60 fine-tune steps each, global magnitude)
  oneshot               one-shot 50 % with 300 fine-tune steps (= the headline's total budget)
  no_finetune           iterative 10 -> 50 % without fine-tuning (finetune.steps=0)
  sweep                 one-shot from dense at 0.1 ... 0.9, 60 fine-tune steps each, one shared control
  sweep_no_finetune     one-shot from dense at 0.1 ... 0.9, no fine-tuning
  lr=<float>            iterative 10 -> 50 % with fine-tuning learning rate <float> (e.g. lr=1e-4, lr=1e-3)
  layerwise             iterative 10 -> 50 % with a per-layer threshold instead of a global one
  nm                    2:4 (50 %) one-shot, 300 fine-tune steps
  neuron                structured: whole MLP neurons, one-shot 50 %, 300 fine-tune steps
  head                  structured: whole attention heads, one-shot 50 %, 300 fine-tune steps
  unstructured_oneshot  same as oneshot (the unstructured row of the nm / neuron comparison)
  gradual               Zhu & Gupta cubic schedule to 50 % within 300 fine-tune steps
  random                iterative 10 -> 50 % with random scores (the baseline criterion)
  calib=<m>[_nm]        one-shot 50 % (or 2:4 with _nm) without fine-tuning by method <m>: magnitude, wanda
                        or sparsegpt (e.g. calib=wanda, calib=sparsegpt_nm)
  calibft=<m>[_nm]      the same followed by 60 fine-tuning steps (and the dense control with the same steps)

Override the source with --config.model.init_path=runs/OTHER/dense (and data.tokenizer,
data.cache_dir) to ablate another dense model.
"""

import importlib.util
from pathlib import Path

_HEADLINE = Path(__file__).resolve().parents[1] / "configs" / "gpt_lambada.py"


def _headline():
    spec = importlib.util.spec_from_file_location("gpt_lambada", _HEADLINE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config(arg: str | None = None):
    c = _headline()
    c.model.init = "checkpoint"
    c.model.init_path = "runs/gpt_lambada/dense"
    c.data.tokenizer = "runs/gpt_lambada/tokenizer.json"
    c.data.cache_dir = "runs/gpt_lambada/cache"
    total = c.finetune.steps * len(c.pruning.rates)  # the headline's whole fine-tuning budget

    variant, _, value = (arg or "").partition("=")
    if variant in ("oneshot", "unstructured_oneshot"):
        c.pruning.rates = (0.5,)
        c.finetune.steps = total
    elif variant == "no_finetune":
        c.finetune.steps = 0
    elif variant == "sweep":
        c.pruning.schedule = "sweep"
        c.pruning.rates = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    elif variant == "sweep_no_finetune":
        c.pruning.schedule = "sweep"
        c.pruning.rates = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
        c.finetune.steps = 0
    elif variant == "lr":
        c.finetune.lr = float(value)
    elif variant == "layerwise":
        c.pruning.scope = "layerwise"
    elif variant == "nm":
        c.pruning.pattern = "nm"
        c.pruning.rates = (0.5,)
        c.finetune.steps = total
    elif variant == "neuron":
        c.pruning.pattern = "neuron"
        c.pruning.rates = (0.5,)
        c.finetune.steps = total
    elif variant == "head":
        c.pruning.pattern = "head"
        c.pruning.rates = (0.5,)
        c.finetune.steps = total
    elif variant == "gradual":
        c.pruning.schedule = "gradual"
        c.pruning.rates = (0.5,)
        c.finetune.steps = total
    elif variant in ("calib", "calibft"):  # calib[ft]=METHOD[_nm]: one-shot 50 % / 2:4, without [with] fine-tuning
        method, _, nm = value.partition("_")
        c.pruning.method = method
        c.pruning.pattern = "nm" if nm == "nm" else "unstructured"
        c.pruning.rates = (0.5,)
        c.finetune.steps = 60 if variant == "calibft" else 0
    elif variant == "random":
        c.pruning.method = "random"
    else:
        raise ValueError(f"unknown ablation variant {arg!r}; see the docstring of {__file__}")
    return c
