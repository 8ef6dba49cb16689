"""Evaluates finished stages of a run on more tasks, from their checkpoints (no training, no pruning).

    python -m jaxprune.evaluate --config=configs/gpt_lambada.py --workdir=runs/gpt_lambada \
        --stages=dense,prune_1,control_1 --config.eval.tasks="('wikitext2','books_test','lambada')"

The config must be the one the run was trained with: the run directory checks its digest,
which leaves out every `eval.*` key, so tasks and sizes can change here. `--stages=all`
takes every stage in the run's results.jsonl. The run may still be running: only OUT/eval/ is
written (OUT defaults to the run directory). For each stage, the tables go to
OUT/eval/<stage>.evaluate.<task>...{md,json} (the run's own eval/<stage>.* tables stay as they
are) and one line {"stage", "eval", "metrics"} is appended to OUT/eval/evaluations.jsonl;
`python -m jaxprune.report WORKDIR` merges these lines into its tables and plots. With
`--config.eval.shots=K` (K > 0) the task metrics are recorded as <task>_<K>shot_<metric> and the
tables' name ends in .<K>shot, so they sit beside the zero-shot ones.
Exit codes and error lines follow `jaxprune.main` (2 for a config, data or workdir problem).
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from jaxprune import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file, e.g. configs/gpt_lambada.py.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory.")
_STAGES = flags.DEFINE_list("stages", ["dense"], "Stages whose final checkpoints are evaluated, or 'all'.")
_OUT = flags.DEFINE_string("out", None, "Where eval/ goes (default: the run directory).")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    with cli.user_errors():
        evaluate(_CONFIG.value, Path(_WORKDIR.value), _STAGES.value, Path(_OUT.value or _WORKDIR.value))


def few_shot_names(metrics: dict, tasks: list[str], shots: int) -> dict:
    """Task metrics of a k-shot evaluation renamed <task>_<k>shot_<metric>, so that they sit beside the
    zero-shot <task>_<metric> in the run's report instead of replacing them (held-out and corpus perplexities
    keep their names)."""
    from jaxprune.evaluation.perplexity import CORPORA  # whole-text perplexities take no shots

    tasks = [t for t in tasks if t not in CORPORA]
    if not shots or not tasks:
        return metrics
    out = {}
    for k, v in metrics.items():
        task = next((t for t in tasks if k.startswith(t + "_")), None)
        out[f"{task}_{shots}shot_{k[len(task) + 1:]}" if task else k] = v
    return out


def evaluate(config, workdir: Path, stage_names: list[str], out: Path) -> None:
    """Evaluates the final checkpoints of `stage_names` (or ["all"]) of the run in `workdir`."""
    from jaxprune.config import ConfigError
    from jaxprune.experiment import EVALUATIONS, Experiment, plan, read_results
    from jaxprune.training.checkpoint import CheckpointError
    from jaxprune.jsonl import append_jsonl
    from jaxprune.training.loop import final_state

    if not (workdir / "config.json").is_file():
        raise ConfigError(f"{workdir} holds no jaxprune run (no config.json): run python -m jaxprune.main first")
    exp = Experiment(config, workdir, progress=False, read_only=True)
    finished = [r["stage"] for r in read_results(exp.workdir)]
    names = finished if stage_names == ["all"] else stage_names
    stages = {s.name: s for s in plan(config)}
    problems = [f"the config has no stage {n!r} (its stages: {', '.join(stages)})" for n in names if n not in stages]
    problems += [f"stage {n!r} is not finished in {exp.workdir}" for n in names if n in stages and n not in finished]
    if not names:
        problems.append(f"{exp.workdir} has no finished stage yet")
    if problems:
        raise ConfigError("; ".join(problems))
    # Each stage's tables get their own name, so the run's own tables (and other evaluations') are kept.
    tasks = [t for t in config.eval.tasks if t != "heldout"]
    shots = int(config.eval.shots)
    for name in names:
        stage = stages[name]
        abstract = exp._abstract_state(stage, masked=stage.kind == "pruned")
        state = final_state(exp.workdir / name, abstract, {"digest": exp.digest, "phase": name})
        if state is None:
            raise CheckpointError(f"{exp.workdir / name} has no checkpoint")
        tag = ".".join([name, "evaluate", *tasks] + ([f"{shots}shot"] if shots else []))
        metrics = few_shot_names(exp.evaluate(state.params, tag=tag, out_dir=out), tasks, shots)
        append_jsonl(out / EVALUATIONS, {"stage": name, "eval": exp._eval_settings(), "metrics": metrics})
        print(f"[{name}] " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)),
              flush=True)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=cli.flags_parser("config"))
