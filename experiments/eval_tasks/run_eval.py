"""Evaluates a finished stage of a run on the downstream tasks and writes its table.

    JAXPRUNE_DATA_DIR=/work/shared/data python experiments/eval_tasks/run_eval.py \
        --config=configs/gpt_lambada.py:quick --workdir=/tmp/evalmodel --stage=dense \
        --config.eval.tasks="('lambada','hellaswag','storycloze','nq_open','webquestions','triviaqa')" \
        --config.eval.max_examples=300 --out=experiments/eval_tasks

The config must be the one the run was trained with (the run directory checks its
digest; eval.* fields are not part of it, so they can be changed here). The stage's
final parameters are restored from its orbax checkpoint and written to
OUT/eval/<stage>.{md,json}.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file, e.g. configs/gpt_lambada.py:quick.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory.")
_STAGE = flags.DEFINE_string("stage", "dense", "Stage whose final checkpoint is evaluated (dense, prune_1, ...).")
_OUT = flags.DEFINE_string("out", None, "Where eval/<stage>.md and .json go (default: the run directory).")


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    from jaxprune.config import data_dir
    from jaxprune.evaluation import harness
    from jaxprune.experiment import Experiment, plan
    from jaxprune.training.loop import final_state

    config = _CONFIG.value
    exp = Experiment(config, _WORKDIR.value, progress=False, read_only=True)
    stage = next((s for s in plan(config) if s.name == _STAGE.value), None)
    if stage is None:
        sys.exit(f"error: the config has no stage {_STAGE.value!r}")
    abstract = exp._abstract_state(stage, masked=stage.kind == "pruned")
    state = final_state(exp.workdir / stage.name, abstract, {"digest": exp.digest, "phase": stage.name})
    if state is None:
        sys.exit(f"error: {exp.workdir / stage.name} has no checkpoint")
    tasks = [t for t in config.eval.tasks if t != "heldout"]
    metrics = harness.evaluate_tasks(tasks, exp.model, state.params, exp.tokenizer, config.eval, data_dir(config),
                                     out_dir=Path(_OUT.value or exp.workdir), tag=stage.name)
    for k, v in metrics.items():
        print(f"{k} = {v:.4f}" if isinstance(v, float) else f"{k} = {v}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
