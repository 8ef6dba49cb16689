"""Headline experiment: a small GPT trained on the novels, pruned iteratively 10 -> 50 %.

Each stage prunes 10 % more of the attention and MLP weights (global magnitude),
fine-tunes for `finetune.steps` and evaluates held-out perplexity on the validation
novels (and LAMBADA etc. with --config.eval.tasks); a dense control is fine-tuned
for the same steps on the same batches.

    python -m jaxprune.main --config=configs/gpt_lambada.py --workdir=runs/gpt_lambada

Variants (`get_config(arg)`): `configs/gpt_lambada.py:quick` shrinks everything to a
2-minute CPU smoke run; `:gpt2` / `:gpt3-125m` etc. switch to an accelerator size.
"""

from jaxprune.config import default_config


def get_config(arg: str | None = None):
    c = default_config()
    c.seed = 0
    c.model.preset = "nano"  # 2.6 M params (4 layers, d_model 192), 4096-token BPE, context 128
    c.data.source = "books"
    c.data.max_train_bytes = 30_000_000  # the first 30 MB of the training novels: ~8 M tokens
    c.pretrain.steps = 1200
    c.pretrain.batch_size = 32
    c.pretrain.lr = 2e-3
    c.pretrain.warmup_steps = 100
    c.pretrain.log_every = 25
    c.finetune.steps = 60
    c.finetune.batch_size = 32
    c.finetune.lr = 3e-4
    c.finetune.warmup_steps = 10
    c.finetune.log_every = 10
    c.pruning.schedule = "iterative"
    c.pruning.rates = (0.1, 0.2, 0.3, 0.4, 0.5)
    c.eval.tasks = ("heldout", "lambada")
    c.eval.max_examples = 500  # the first 500 LAMBADA passages at every stage (all 5153: --config.eval.max_examples=0)
    c.eval.heldout_batches = 16
    c.checkpoint.every_steps = 250

    if arg == "quick":  # CPU smoke test: minutes, not an experiment
        c.model.preset = "femto"
        c.data.max_train_bytes = 2_000_000
        c.data.max_eval_bytes = 300_000
        c.data.tokenizer_train_bytes = 2_000_000
        c.pretrain.steps = 60
        c.pretrain.batch_size = 16
        c.finetune.steps = 10
        c.finetune.batch_size = 16
        c.pruning.rates = (0.25, 0.5)
        c.eval.heldout_batches = 4
        c.eval.batch_size = 16
        c.eval.tasks = ("heldout",)
        c.checkpoint.every_steps = 20
    elif arg:  # an accelerator size, e.g. gpt2 or gpt3-125m
        c.model.preset = arg
        c.model.vocab_size = 32768
        c.model.dtype = "bfloat16"
        c.data.max_train_bytes = 0
        c.pretrain.batch_size = 256
        c.pretrain.steps = 5000
        c.pretrain.lr = 6e-4
    return c
