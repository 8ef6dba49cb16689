"""The default configuration (every key, documented) and its validation.

Experiment configs in configs/ and experiments/ start from `default_config()` and
override fields; `validate()` runs before any compute and reports every problem at
once, each with one clear line.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import ml_collections
from ml_collections import config_dict

from jaxprune.models.presets import ModelConfig, get_preset, model_config_from_preset

DATA_DIR_ENV = "JAXPRUNE_DATA_DIR"
EVAL_TASKS = ("heldout", "wikitext2", "books_test", "lambada", "hellaswag", "storycloze", "nq_open", "webquestions", "triviaqa")
DATA_SOURCES = ("books", "tinyshakespeare", "wikitext2", "files")
SCORE_METHODS = ("magnitude", "random", "wanda", "sparsegpt")
CALIBRATED_METHODS = ("wanda", "sparsegpt")  # need calibration data; per-layer, pattern unstructured or nm
PATTERNS = ("unstructured", "nm", "neuron", "head")
MODEL_INITS = ("scratch", "checkpoint", "hf", "hf_gpt2", "gguf")
FINETUNE_LOSSES = ("ce", "kd", "ce+kd")
PRETRAINED_INITS = ("hf", "hf_gpt2", "gguf")  # model.preset="auto" takes the architecture from these files


class ConfigError(ValueError):
    """Raised with one line per problem found in a config."""


def _optimizer_fields(steps: int, lr: float, warmup: int) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.steps = steps  # optimizer steps (0 = skip this phase)
    c.batch_size = 32  # sequences per optimizer step (global, over all devices)
    c.grad_accum = 1  # micro-batches per step; batch_size must be divisible by it
    c.lr = lr  # peak learning rate (AdamW)
    c.warmup_steps = warmup  # linear warmup steps, then cosine decay to lr * min_lr_ratio
    c.min_lr_ratio = 0.1
    c.weight_decay = 0.1  # decoupled weight decay on kernels and embeddings (not norms/biases)
    c.b1 = 0.9
    c.b2 = 0.95
    c.grad_clip = 1.0  # global-norm clipping (0 = off)
    c.eval_every = 0  # held-out evaluation every N steps during this phase (0 = only at the end)
    c.log_every = 10  # steps between lines in metrics.jsonl
    # > 0: the loss runs the LM head on this many positions at a time (rematerialised in the backward pass), so
    # the (batch, length, vocab) float32 logits are never all live; 0 = all positions at once
    c.loss_chunk = 0
    return c


def default_config() -> ml_collections.ConfigDict:
    """Every configuration key with its default; experiments override these."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds init, data order, dropout and random pruning scores

    # --- model ---------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    c.model.preset = "nano"  # architecture size, see jaxprune/models/presets.py (femto ... smollm2-135m); "auto": the checkpoint's
    c.model.vocab_size = config_dict.placeholder(int)  # None: the preset's; the BPE tokenizer is trained to this size
    c.model.max_len = config_dict.placeholder(int)  # context length; None: the preset's
    c.model.dtype = "float32"  # compute dtype: float32 or bfloat16 (params and optimizer stay float32)
    c.model.dropout = 0.0
    c.model.remat = False  # rematerialise each block in the backward pass (saves memory on large presets)
    c.model.attention_impl = config_dict.placeholder(str)  # None: XLA chooses; "cudnn" for flash attention on GPUs
    c.model.init = "scratch"  # scratch (train per `pretrain`), checkpoint, hf (GPT-2 / LLaMA / Mistral / Qwen2), gguf
    c.model.init_path = ""  # checkpoint dir, HF model dir/name, or .gguf file for the inits above

    # --- data ----------------------------------------------------------------
    c.data = ml_collections.ConfigDict()
    c.data.source = "books"  # books | tinyshakespeare | wikitext2 | files | tfds:NAME (e.g. tfds:lambada)
    c.data.data_dir = ""  # offline data directory laid out like shared/data; "" -> $JAXPRUNE_DATA_DIR
    c.data.files = ()  # for source=files: text files for training (validation: data.eval_files)
    c.data.eval_files = ()
    c.data.max_train_bytes = 0  # cap on training text read (0 = all), for quick runs
    c.data.max_eval_bytes = 0  # cap on held-out text read (0 = all)
    c.data.tokenizer = ""  # "" = train a byte-level BPE (saved in the workdir); or a tokenizer.json path
    c.data.tokenizer_train_bytes = 20_000_000  # training text used to fit the BPE tokenizer
    c.data.cache_dir = ""  # tokenised-array cache ("" = WORKDIR/cache)

    # --- dense model: pretraining ---------------------------------------------
    c.pretrain = _optimizer_fields(steps=1000, lr=1e-3, warmup=100)

    # --- pruning -------------------------------------------------------------
    c.pruning = ml_collections.ConfigDict()
    # iterative: one prune -> fine-tune stage per cumulative rate (one rate = one-shot);
    # sweep: each rate pruned one-shot from the dense model; gradual: Zhu & Gupta cubic during fine-tuning
    c.pruning.schedule = "iterative"
    c.pruning.rates = (0.1, 0.2, 0.3, 0.4, 0.5)  # cumulative sparsity after each stage; () = dense only
    # magnitude (|w|), random, wanda (|w| * ||X_j||, per output) or sparsegpt (OBS reconstruction, per layer);
    # wanda and sparsegpt calibrate block by block and ignore `scope` (see README)
    c.pruning.method = "magnitude"
    c.pruning.scope = "global"  # global (one threshold over all prunable weights) or layerwise
    c.pruning.pattern = "unstructured"  # unstructured | nm | neuron (MLP neurons) | head (attention heads)
    c.pruning.n = 2  # N:M pattern: keep n of every m weights along the input dimension
    c.pruning.m = 4
    c.pruning.include = (r".*/(attn|mlp)/[^/]+/kernel$",)  # regexes over param paths that may be pruned
    c.pruning.exclude = ()  # regexes that are never pruned (applied after include)
    c.pruning.gradual_every = 10  # gradual schedule: prune every N fine-tuning steps (Zhu & Gupta's dt)
    c.pruning.gradual_end_fraction = 0.75  # gradual: reach the final rate at this fraction of finetune.steps
    c.pruning.calibration_samples = 128  # wanda/sparsegpt: training sequences (of model.max_len tokens) to calibrate on
    c.pruning.calibration_batch = 8  # wanda/sparsegpt: sequences per calibration forward (bounds activation memory)
    c.pruning.sparsegpt_blocksize = 128  # sparsegpt: inputs per lazy-update block (a multiple of pruning.m for N:M)
    c.pruning.sparsegpt_damp = 0.01  # sparsegpt: dampening, as a fraction of mean(diag H)

    # --- fine-tuning after each pruning stage ---------------------------------
    c.finetune = _optimizer_fields(steps=200, lr=3e-4, warmup=20)
    c.finetune.control = True  # also fine-tune the dense model for the same steps on the same data
    # ce: cross-entropy; kd: KL(teacher || student) at kd_temperature (x T^2); ce+kd: (1 - kd_alpha) ce + kd_alpha kd.
    # The teacher is the run's dense model, frozen; the dense controls distil from it too (self-distillation).
    c.finetune.loss = "ce"
    c.finetune.kd_temperature = 2.0
    c.finetune.kd_alpha = 0.5
    # kd / ce+kd: also match these blocks' outputs to the teacher's (intermediate-layer distillation), adding
    # kd_hidden_weight x their mean MSE at unit RMS per token (training/step.py: hidden_state_mse); () = logits only
    c.finetune.kd_hidden_layers = ()
    c.finetune.kd_hidden_weight = 1.0

    # --- evaluation ----------------------------------------------------------
    c.eval = ml_collections.ConfigDict()
    c.eval.tasks = ("heldout",)  # heldout (perplexity on data's validation split), lambada, hellaswag, ...
    c.eval.shots = 0  # k-shot prompts for the tasks (0 = zero-shot)
    c.eval.max_examples = 0  # per task (0 = all), for quick runs
    c.eval.batch_size = 32
    c.eval.heldout_batches = 20  # batches of held-out text for perplexity (0 = all)
    c.eval.ppl_windows = 0  # wikitext2 / books_test: evenly spaced windows of model.max_len tokens (0 = all)
    c.eval.before_finetune = False  # pruned stages: also evaluate right after pruning, before fine-tuning
    c.eval.lm_eval_tasks = ()  # lm-evaluation-harness tasks (e.g. 'lambada_openai_local'), needs the lmeval extra

    # --- device mesh (jax.jit + NamedSharding) --------------------------------
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1 takes the devices left over by the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    # logical axis -> mesh axes; anything not listed is replicated.
    c.mesh.rules = (
        ("batch", ("data", "fsdp")),
        ("vocab", "tensor"),
        ("embed", "fsdp"),
        ("mlp", "tensor"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("qkv", "tensor"),
        ("act_mlp", "tensor"),
        ("act_heads", "tensor"),
    )
    c.mesh.distributed = False  # call jax.distributed.initialize() (multi-host TPU pods / GPU clusters)

    # --- checkpoints ---------------------------------------------------------
    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 100  # save TrainState + data position every N steps (and at each phase's end)
    c.checkpoint.max_to_keep = 2
    return c


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """Resolves config.model (preset + overrides) into a ModelConfig."""
    m = config.model
    if m.preset == "auto":  # the architecture of the checkpoint being imported
        from jaxprune.models.pretrained import pretrained_model_config
        return pretrained_model_config(config, max_len=m.max_len, dtype=m.dtype, dropout=m.dropout, remat=m.remat,
                                       attention_impl=m.attention_impl)
    return model_config_from_preset(
        m.preset, vocab_size=m.vocab_size, max_len=m.max_len, dtype=m.dtype, dropout=m.dropout,
        remat=m.remat, attention_impl=m.attention_impl)


def data_dir(config: ml_collections.ConfigDict) -> Path | None:
    """The offline data directory: config.data.data_dir, else $JAXPRUNE_DATA_DIR, else None."""
    d = config.data.data_dir or os.environ.get(DATA_DIR_ENV, "")
    return Path(d).expanduser() if d else None


# Files each local source or task needs, relative to the data directory.
REQUIRED_FILES = {
    "books": ["books/splits.json"],
    "tinyshakespeare": ["tinyshakespeare/input.txt"],
    "wikitext2": ["wikitext-2/valid.txt", "wikitext-2/test.txt"],
    "books_test": ["books/splits.json"],
    "lambada": ["lambada/lambada_test.jsonl"],
    "hellaswag": ["hellaswag/hellaswag_val_full.txt.bz2"],
    "storycloze": ["storycloze/cloze_test_val__spring2016.csv", "storycloze/cloze_test_test__spring2016.csv"],
    "nq_open": ["nq_open/NQ-open.dev.jsonl"],
    "webquestions": ["webquestions/main/test.json", "webquestions/main/trainmodel.json"],
    "triviaqa": ["triviaqa/triviaqa_sm_sub.jsonl"],
}


def check_devices(config: ml_collections.ConfigDict, n_devices: int) -> None:
    """Raises ConfigError if the mesh does not fit `n_devices` or a batch size is not a multiple of its
    data x fsdp shards (checked before anything is compiled)."""
    m = config.mesh
    sizes = [m.data, m.fsdp, m.tensor]
    known = 1
    for s in sizes:
        known *= s if s != -1 else 1
    problems = []
    if -1 in sizes:
        if n_devices % known:
            problems.append(f"mesh data/fsdp/tensor={sizes} needs a multiple of {known} devices; "
                            f"{n_devices} are visible")
        sizes[sizes.index(-1)] = max(n_devices // known, 1)
    elif known != n_devices:
        problems.append(f"mesh data/fsdp/tensor={sizes} needs {known} devices; {n_devices} are visible "
                        f"(set one axis to -1 to use whatever is there)")
    shards = sizes[0] * sizes[1]
    if not problems:
        for name, bs in (("pretrain", config.pretrain.batch_size), ("finetune", config.finetune.batch_size),
                         ("eval", config.eval.batch_size)):
            if bs % shards:
                problems.append(f"{name}.batch_size={bs} must be a multiple of the mesh's data x fsdp = {shards}")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks a config before any compute; raises ConfigError listing every problem."""
    problems: list[str] = []
    add = problems.append

    if not isinstance(config.seed, int) or config.seed < 0:
        add(f"seed must be a non-negative integer, got {config.seed!r}")

    # model
    try:
        if config.model.preset == "auto":
            if config.model.init not in PRETRAINED_INITS:
                raise ValueError(f"'auto' takes the architecture from a checkpoint: model.init must be one of "
                                 f"{PRETRAINED_INITS}, got {config.model.init!r}")
        else:
            get_preset(config.model.preset)
        mc = model_config(config)  # "auto": reads the checkpoint's config.json / GGUF header (no weights)
    except (ValueError, OSError) as e:
        add(f"model.preset: {e}")
    else:
        if mc.d_head is None and mc.d_model % mc.n_head:
            add(f"model: d_model={mc.d_model} is not divisible by n_head={mc.n_head}")
        if mc.vocab_size <= 0 or mc.max_len <= 0:
            add(f"model: vocab_size and max_len must be positive (got {mc.vocab_size}, {mc.max_len})")
        elif config.model.init == "scratch" and not config.data.tokenizer and mc.vocab_size < 257:
            add(f"model.vocab_size={mc.vocab_size}: the byte-level BPE trained for it needs at least 257 tokens "
                "(256 bytes + <|endoftext|>)")
    if config.model.dtype not in ("float32", "bfloat16"):
        add(f"model.dtype must be float32 or bfloat16, got {config.model.dtype!r}")
    if not 0.0 <= config.model.dropout < 1.0:
        add(f"model.dropout must be in [0, 1), got {config.model.dropout}")
    if config.model.init not in MODEL_INITS:
        add(f"model.init must be one of {MODEL_INITS}, got {config.model.init!r}")
    elif config.model.init != "scratch" and not config.model.init_path:
        add(f"model.init={config.model.init!r} needs model.init_path")
    elif config.model.init in ("checkpoint", "gguf") and not Path(config.model.init_path).exists():
        add(f"model.init_path {config.model.init_path!r} does not exist")

    # optimizer phases
    for phase in ("pretrain", "finetune"):
        p = config[phase]
        for key in ("steps", "warmup_steps", "eval_every", "loss_chunk"):
            if not isinstance(p[key], int) or p[key] < 0:
                add(f"{phase}.{key} must be a non-negative integer, got {p[key]!r}")
        for key in ("batch_size", "grad_accum", "log_every"):
            if not isinstance(p[key], int) or p[key] <= 0:
                add(f"{phase}.{key} must be a positive integer, got {p[key]!r}")
        if isinstance(p.batch_size, int) and isinstance(p.grad_accum, int) and p.grad_accum > 0 \
                and p.batch_size % p.grad_accum:
            add(f"{phase}.batch_size={p.batch_size} is not divisible by grad_accum={p.grad_accum}")
        if not p.lr > 0:
            add(f"{phase}.lr must be positive, got {p.lr}")
        if not 0.0 <= p.min_lr_ratio <= 1.0:
            add(f"{phase}.min_lr_ratio must be in [0, 1], got {p.min_lr_ratio}")
        if p.weight_decay < 0 or p.grad_clip < 0:
            add(f"{phase}.weight_decay and grad_clip must be >= 0")

    ft = config.finetune
    if ft.loss not in FINETUNE_LOSSES:
        add(f"finetune.loss must be one of {FINETUNE_LOSSES}, got {ft.loss!r}")
    if not ft.kd_temperature > 0 or not 0.0 <= ft.kd_alpha <= 1.0:
        add(f"finetune.kd_temperature must be > 0 and kd_alpha in [0, 1], got {ft.kd_temperature}, {ft.kd_alpha}")
    layers = ft.kd_hidden_layers
    if not isinstance(layers, (tuple, list)) or not all(isinstance(i, int) and i >= 0 for i in layers) \
            or len(set(layers)) != len(layers):
        add(f"finetune.kd_hidden_layers must be distinct non-negative block indices, got {layers!r}")
    elif layers and ft.loss == "ce":
        add("finetune.kd_hidden_layers needs a teacher: set finetune.loss='kd' or 'ce+kd'")
    if not isinstance(ft.kd_hidden_weight, (int, float)) or not ft.kd_hidden_weight > 0:
        add(f"finetune.kd_hidden_weight must be > 0, got {ft.kd_hidden_weight!r}")

    # pruning
    pr = config.pruning
    if pr.schedule not in ("iterative", "sweep", "gradual"):
        add(f"pruning.schedule must be 'iterative', 'sweep' or 'gradual', got {pr.schedule!r}")
    rates = tuple(pr.rates)
    for r in rates:
        if not isinstance(r, (int, float)) or not 0.0 <= r < 1.0:
            add(f"pruning.rates: every rate must be in [0, 1), got {r!r} (a rate of 1 leaves no weights; below 1, "
                f"layer-wise counts floor(rate * n) < n keep every layer non-empty, and global pruning is "
                f"checked for empty layers right after each pruning step)")
    if any(b < a for a, b in zip(rates, rates[1:])):
        add(f"pruning.rates must be non-decreasing (they are cumulative), got {rates}")
    if pr.schedule == "gradual" and len(rates) > 1:
        add("pruning.schedule='gradual' takes one final rate in pruning.rates")
    if pr.method not in SCORE_METHODS:
        add(f"pruning.method must be one of {SCORE_METHODS}, got {pr.method!r}")
    if pr.scope not in ("global", "layerwise"):
        add(f"pruning.scope must be 'global' or 'layerwise', got {pr.scope!r}")
    if pr.pattern not in PATTERNS:
        add(f"pruning.pattern must be one of {PATTERNS}, got {pr.pattern!r}")
    if pr.pattern == "nm":
        if not (isinstance(pr.n, int) and isinstance(pr.m, int) and 0 < pr.n < pr.m):
            add(f"pruning.n and pruning.m must satisfy 0 < n < m, got n={pr.n}, m={pr.m}")
        elif rates and any(abs(r - (1 - pr.n / pr.m)) > 1e-9 for r in rates if r > 0):
            add(f"pruning.rates {rates} disagree with the {pr.n}:{pr.m} pattern, whose sparsity is "
                f"{1 - pr.n / pr.m:g}; use pruning.rates=({1 - pr.n / pr.m:g},)")
    if pr.method in CALIBRATED_METHODS:
        if pr.pattern not in ("unstructured", "nm"):
            add(f"pruning.method={pr.method!r} supports pattern 'unstructured' or 'nm', got {pr.pattern!r}")
        if not isinstance(pr.calibration_samples, int) or pr.calibration_samples <= 0:
            add(f"pruning.calibration_samples must be a positive integer, got {pr.calibration_samples!r}")
        if not isinstance(pr.calibration_batch, int) or pr.calibration_batch <= 0:
            add(f"pruning.calibration_batch must be a positive integer, got {pr.calibration_batch!r}")
        if not isinstance(pr.sparsegpt_blocksize, int) or pr.sparsegpt_blocksize <= 0 or (
                pr.pattern == "nm" and isinstance(pr.m, int) and pr.m > 0 and pr.sparsegpt_blocksize % pr.m):
            add(f"pruning.sparsegpt_blocksize must be a positive integer (a multiple of pruning.m for N:M), got "
                f"{pr.sparsegpt_blocksize!r}")
        if not pr.sparsegpt_damp > 0:
            add(f"pruning.sparsegpt_damp must be positive, got {pr.sparsegpt_damp!r}")
    if pr.gradual_every <= 0 or not 0 < pr.gradual_end_fraction <= 1:
        add("pruning.gradual_every must be > 0 and gradual_end_fraction in (0, 1]")
    if pr.schedule == "gradual" and rates and config.finetune.steps == 0:
        add("pruning.schedule='gradual' prunes during fine-tuning: finetune.steps must be > 0")
    import re
    for pat in tuple(pr.include) + tuple(pr.exclude):
        try:
            re.compile(pat)
        except re.error as e:
            add(f"pruning include/exclude pattern {pat!r} is not a valid regex: {e}")

    # evaluation
    for t in config.eval.tasks:
        if t not in EVAL_TASKS:
            add(f"eval.tasks: unknown task {t!r}; known tasks: {', '.join(EVAL_TASKS)}")
    if tuple(config.eval.get("lm_eval_tasks", ()) or ()) and importlib.util.find_spec("lm_eval") is None:
        add("eval.lm_eval_tasks needs lm-evaluation-harness: pip install 'jaxprune[lmeval]'")
    if config.eval.shots < 0 or config.eval.max_examples < 0 or config.eval.batch_size <= 0 \
            or config.eval.heldout_batches < 0 or config.eval.ppl_windows < 0:
        add("eval.shots, max_examples, heldout_batches and ppl_windows must be >= 0 and batch_size > 0")

    # mesh
    sizes = [config.mesh.data, config.mesh.fsdp, config.mesh.tensor]
    if any(s == 0 or s < -1 for s in sizes) or sizes.count(-1) > 1:
        add(f"mesh: axis sizes must be positive, at most one may be -1; got data/fsdp/tensor={sizes}")

    if config.checkpoint.every_steps <= 0 or config.checkpoint.max_to_keep <= 0:
        add("checkpoint.every_steps and checkpoint.max_to_keep must be positive")

    # data
    src = config.data.source
    if src.startswith("tfds:"):
        if len(src) <= 5:
            add("data.source 'tfds:' needs a dataset name, e.g. tfds:lambada")
    elif src not in DATA_SOURCES:
        add(f"data.source must be one of {DATA_SOURCES} or tfds:NAME, got {src!r}")
    elif src == "files":
        if not config.data.files:
            add("data.source='files' needs data.files")
        for f in tuple(config.data.files) + tuple(config.data.eval_files):
            if not Path(f).is_file():
                add(f"data file {f!r} does not exist")
    needed = [] if src.startswith("tfds:") or src == "files" else list(REQUIRED_FILES[src]) \
        if src in REQUIRED_FILES else []
    for t in config.eval.tasks:
        needed += REQUIRED_FILES.get(t, [])
    if needed:
        d = data_dir(config)
        if d is None:
            add(f"no data directory: set data.data_dir or ${DATA_DIR_ENV} to a directory laid out like "
                f"shared/data (needed: {', '.join(needed)})")
        elif not d.is_dir():
            add(f"data directory {str(d)!r} does not exist")
        else:
            for rel in needed:
                if not (d / rel).is_file():
                    add(f"missing data file {str(d / rel)!r}")
    if config.data.tokenizer and not Path(config.data.tokenizer).is_file():
        add(f"data.tokenizer {config.data.tokenizer!r} does not exist")

    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
