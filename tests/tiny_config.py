"""The tiny test config as a config file, for tests that run `python -m jaxprune.main`.

Data locations come from --config.data.* overrides given by the test.
"""

from jaxprune.config import default_config


def get_config():
    c = default_config()
    c.model.preset = "femto"
    c.model.vocab_size = 512
    c.data.max_train_bytes = 1_000_000
    c.data.max_eval_bytes = 200_000
    c.pretrain.steps = 40
    c.pretrain.batch_size = 8
    c.pretrain.warmup_steps = 5
    c.pretrain.lr = 3e-3
    c.pretrain.log_every = 10
    c.finetune.steps = 10
    c.finetune.batch_size = 8
    c.finetune.warmup_steps = 2
    c.finetune.log_every = 5
    c.pruning.rates = (0.3, 0.6)
    c.eval.batch_size = 8
    c.eval.heldout_batches = 4
    c.checkpoint.every_steps = 5
    return c
