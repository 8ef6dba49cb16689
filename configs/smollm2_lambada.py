"""SmolLM2-135M-Instruct (GGUF, Q4_1 dequantised to float32) pruned 10 -> 30 -> 50 %, LAMBADA + held-out books.

    python scripts/fetch_smollm2.py        # once: caches the .gguf in ~/.cache/jaxprune (or $JAXPRUNE_CACHE_DIR)
    python -m jaxprune.main --config=configs/smollm2_lambada.py --workdir=runs/smollm2_lambada

The dense stage is the imported model (no pretraining); each stage prunes the attention and
MLP kernels by global magnitude to the next cumulative rate, fine-tunes briefly on the
training novels and evaluates held-out perplexity on the validation novels and LAMBADA.
The tokenizer is the GGUF's own (49152 tokens). `:quick` shrinks it to a CPU smoke run
(100 LAMBADA examples, a few fine-tuning steps). The file's path can be given with
--config.model.init_path=PATH.

`:calibft=METHOD[_nm]` (METHOD: magnitude, wanda, sparsegpt) is the calibration comparison
sized for a CPU: one-shot 50 % (or 2:4 with _nm) with 128 calibration windows of 256 tokens,
evaluated right after pruning and again after a short fine-tune (20 steps x 8 x 256 tokens),
on the books validation windows, WikiText-2 test, the books test split and LAMBADA. Only
`calibft=magnitude` also trains the dense control (the others share its batches and seeds,
so one control serves all six runs).
"""

from pathlib import Path

from jaxprune.config import default_config
from jaxprune.models.fetch import FILES, cache_dir


def get_config(arg: str | None = None):
    c = default_config()
    c.seed = 0
    c.model.preset = "smollm2-135m"  # 30 layers, d_model 576, 9 heads / 3 kv heads, tied embeddings
    c.model.max_len = 512  # no position table: any context up to the model's 8192 works
    c.model.init = "gguf"
    c.model.init_path = str(Path(cache_dir()) / FILES["smollm2"].filename)
    c.data.source = "books"
    c.data.max_train_bytes = 20_000_000
    c.data.max_eval_bytes = 2_000_000
    c.pretrain.steps = 0  # pretrained: no pretraining phase
    c.finetune.steps = 100
    c.finetune.batch_size = 16
    c.finetune.lr = 3e-5
    c.finetune.warmup_steps = 10
    c.finetune.weight_decay = 0.0
    c.finetune.log_every = 10
    c.pruning.schedule = "iterative"
    c.pruning.rates = (0.1, 0.3, 0.5)
    c.pruning.method = "magnitude"
    c.pruning.scope = "global"
    c.eval.tasks = ("heldout", "lambada")
    c.eval.max_examples = 500
    c.eval.batch_size = 16
    c.eval.heldout_batches = 16
    c.checkpoint.every_steps = 50

    variant, _, value = (arg or "").partition("=")
    if variant == "calibft":
        method, _, nm = value.partition("_")
        c.model.max_len = 256
        c.data.max_train_bytes = 5_000_000
        c.pruning.rates = (0.5,)
        c.pruning.method = method
        c.pruning.pattern = "nm" if nm == "nm" else "unstructured"
        c.pruning.scope = "layerwise"  # magnitude per layer, as Wanda and SparseGPT are
        c.pruning.calibration_samples = 128
        c.finetune.steps = 20
        c.finetune.batch_size = 8
        c.finetune.lr = 5e-5
        c.finetune.warmup_steps = 2
        c.finetune.log_every = 2
        c.finetune.control = value == "magnitude"
        c.eval.tasks = ("heldout", "wikitext2", "books_test", "lambada")
        c.eval.before_finetune = True
        c.eval.max_examples = 200
        c.eval.batch_size = 8
        c.eval.heldout_batches = 4
        c.eval.ppl_windows = 32
        c.checkpoint.every_steps = 10
    elif variant in ("iter", "oneshot", "nofinetune", "gpu"):
        _recovery(c, variant, value)
    elif arg == "quick":  # CPU smoke run
        c.model.max_len = 128
        c.data.max_train_bytes = 2_000_000
        c.data.max_eval_bytes = 300_000
        c.finetune.steps = 4
        c.finetune.batch_size = 4
        c.finetune.warmup_steps = 1
        c.finetune.log_every = 2
        c.eval.max_examples = 100
        c.eval.batch_size = 8
        c.eval.heldout_batches = 4
        c.checkpoint.every_steps = 4
    elif arg:
        raise ValueError(f"unknown variant {arg!r}: use quick, calibft=METHOD[_nm], iter=METHOD[,LOSS], "
                         f"oneshot=METHOD[,LOSS], nofinetune=METHOD or gpu=METHOD[,LOSS]")
    return c


RATES = (0.1, 0.2, 0.3, 0.4, 0.5)
CPU_STEPS = 8  # per stage: 5 x 8 x 8 x 256 = 81,920 fine-tune tokens per arm (a KD step of SmolLM2 takes ~1 min here)


def _recovery(c, variant: str, value: str) -> None:
    """The recovery experiment on the real LM (issue 16), one arm per command.

    iter=METHOD[,LOSS]   prune 10 -> 20 -> 30 -> 40 -> 50 % (METHOD recalibrated on the current model at
                         every stage), fine-tune after each; matched dense controls with the same loss, except
                         for kd: a dense model distilled from its own frozen copy sees a KL of float noise
                         (~1e-8) that Adam turns into lr-sized random updates (tests/test_distillation.py), so
                         the kd arms train no control and compare with the dense model and with the CE
                         control of iter=METHOD,ce (the same batches and seeds)
    oneshot=METHOD[,LOSS] one-shot 50 % with the same total fine-tuning tokens as iter
    nofinetune=METHOD    the sweep 10 .. 50 % from dense, no fine-tuning
    gpu=METHOD[,LOSS]    iter at accelerator size: context 1024, 5 x 1200 steps x 8 x 1024 = 49 M tokens,
                         full test sets
    LOSS: ce (default), kd or ce+kd (finetune.loss). Hyper-parameters are chosen on books validation
    (held-out), never on the test sets.
    """
    method, _, loss = value.partition(",")
    c.pruning.method = method or "sparsegpt"
    c.pruning.scope = "layerwise"
    c.pruning.calibration_samples = 64
    c.finetune.loss = loss or "ce"
    c.model.max_len = 256
    c.data.max_train_bytes = 5_000_000
    c.finetune.batch_size = 8
    c.finetune.lr = 5e-5
    c.finetune.warmup_steps = 2
    c.finetune.log_every = 4
    c.finetune.control = c.finetune.loss != "kd"
    c.pruning.rates = RATES
    c.finetune.steps = CPU_STEPS
    c.eval.tasks = ("heldout", "wikitext2", "books_test", "lambada")
    c.eval.max_examples = 500
    c.eval.batch_size = 8
    c.eval.heldout_batches = 8
    c.eval.ppl_windows = 32
    c.eval.before_finetune = False  # the nofinetune arm measures pruning without fine-tuning
    c.checkpoint.every_steps = 4
    if variant == "oneshot":
        c.pruning.rates = (0.5,)
        c.finetune.steps = CPU_STEPS * len(RATES)  # the same fine-tuning tokens as the iterative arm
    elif variant == "nofinetune":
        c.pruning.schedule = "sweep"
        c.finetune.steps = 0
        c.eval.before_finetune = False
    elif variant == "gpu":
        c.model.max_len = 1024
        c.model.dtype = "bfloat16"
        c.data.max_train_bytes = 0
        c.pruning.calibration_samples = 128
        c.finetune.steps = 1200
        c.finetune.warmup_steps = 50
        c.finetune.log_every = 50
        c.eval.tasks = ("heldout", "wikitext2", "books_test", "lambada", "hellaswag", "storycloze", "nq_open",
                        "webquestions", "triviaqa")
        c.eval.max_examples = 0
        c.eval.batch_size = 32
        c.eval.heldout_batches = 0
        c.eval.ppl_windows = 0
        c.checkpoint.every_steps = 200
