"""Evaluates finished stages of a run on more tasks, from their checkpoints (no training, no pruning).

    python -m jaxprune.evaluate --config=configs/gpt_lambada.py --workdir=runs/gpt_lambada \
        --stages=dense,prune_1,control_1 --config.eval.tasks="('wikitext2','books_test','lambada')"

The config must be the one the run was trained with: the run directory checks its digest,
which leaves out every `eval.*` key, so tasks and sizes can change here. `--stages=all`
takes every stage in the run's results.jsonl. The run may still be running (nothing is
written to it unless --out names it). For each stage, OUT/eval/<stage>.{md,json} is
written and one line {"stage", "metrics"} is appended to OUT/eval/evaluations.jsonl.
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file, e.g. configs/gpt_lambada.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory.")
_STAGES = flags.DEFINE_list("stages", ["dense"], "Stages whose final checkpoints are evaluated, or 'all'.")
_OUT = flags.DEFINE_string("out", None, "Where eval/ goes (default: the run directory).")


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    from jaxprune.config import ConfigError
    from jaxprune.experiment import Experiment, plan, read_results
    from jaxprune.training.loop import append_jsonl, final_state

    config = _CONFIG.value
    try:
        exp = Experiment(config, _WORKDIR.value, progress=False, read_only=True)
    except (ConfigError, FileNotFoundError, RuntimeError, ValueError) as e:
        sys.exit(f"error: {e}")
    finished = [r["stage"] for r in read_results(exp.workdir)]
    names = finished if _STAGES.value == ["all"] else _STAGES.value
    stages = {s.name: s for s in plan(config)}
    problems = [f"the config has no stage {n!r}" for n in names if n not in stages]
    problems += [f"stage {n!r} is not finished in {exp.workdir}" for n in names if n in stages and n not in finished]
    if problems:
        sys.exit("error: " + "; ".join(problems))
    out = Path(_OUT.value or exp.workdir)
    for name in names:
        stage = stages[name]
        abstract = exp._abstract_state(stage, masked=stage.kind == "pruned")
        state = final_state(exp.workdir / name, abstract, {"digest": exp.digest, "phase": name})
        if state is None:
            sys.exit(f"error: {exp.workdir / name} has no checkpoint")
        metrics = exp.evaluate(state.params, tag=name, out_dir=out)
        append_jsonl(out / "eval" / "evaluations.jsonl", {"stage": name, "metrics": metrics})
        print(f"[{name}] " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)),
              flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
