"""lm-evaluation-harness's command line with jaxprune models: `--model jaxprune`.

    python -m jaxprune.lm_eval --model jaxprune --model_args workdir=runs/gpt_lambada,stage=prune_3 \\
        --tasks lambada_openai_local,hellaswag_local --batch_size 32 --output_path out/
    python -m jaxprune.lm_eval --model jaxprune \\
        --model_args init=gguf,path=~/.cache/jaxprune/SmolLM2-135M-Instruct.Q4_1.gguf --tasks arc_easy

Everything after `python -m jaxprune.lm_eval` is lm-eval's own CLI (`lm_eval --help`): this
module registers the model name `jaxprune` (lm-eval 0.4 has no plugin entry point for models,
so the plain `lm_eval` command cannot see it), adds the packaged offline task files
(jaxprune/evaluation/lm_eval_tasks: lambada_openai_local, hellaswag_local, storycloze_2016_local,
nq_open_local, webqs_local, triviaqa_local, wikitext_local) to --include_path, and fails at once,
before loading anything, when a requested task needs the Hugging Face hub and it is out of reach.

Model args (comma-separated key=value):
  workdir=DIR,stage=NAME   a finished stage of a jaxprune run: its final checkpoint (masks applied),
                           its tokenizer, the run's mesh; the run's config is DIR/config.json
  init=gguf|hf,path=P      a pretrained checkpoint (its own architecture and tokenizer);
                           max_len=N shortens the context
  batch_size=N             rows per compiled batch (default: lm-eval's --batch_size if a number, else 32)
From Python, `jaxprune.evaluation.lm_eval_backend.JaxpruneLM(model, params, tokenizer)` and its
`run_tasks` do the same without the command line. Needs the `lmeval` extra: pip install "jaxprune[lmeval]".
Exit codes follow `jaxprune.main` (2 for a usage, config, data or workdir problem).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from lm_eval import utils as lm_utils
from lm_eval.api.registry import register_model

from jaxprune.evaluation.lm_eval_backend import LOCAL_TASKS, JaxpruneLM

EXIT_USAGE = 2


def load_stage(workdir: str | Path, stage: str) -> dict[str, Any]:
    """JaxpruneLM arguments for the final checkpoint of `stage` in the run at `workdir`."""
    from jaxprune.evaluation.scoring import ModuleApply
    from jaxprune.experiment import open_stage, restore_stage, run_config

    workdir = Path(workdir).expanduser()
    exp, st = open_stage(run_config(workdir), workdir, stage)
    state = restore_stage(exp, st)
    return dict(model=exp.model, params=state.params, tokenizer=exp.tokenizer,
                apply_fn=ModuleApply(exp.model, exp.batch_sh), batch_sharding=exp.batch_sh)


def load_checkpoint(init: str, path: str, max_len: int | None = None) -> dict[str, Any]:
    """JaxpruneLM arguments for a pretrained HF or GGUF checkpoint, with its own architecture."""
    import ml_collections

    from jaxprune.models import build_model, load_pretrained, load_pretrained_tokenizer, pretrained_model_config

    c = ml_collections.ConfigDict({"model": {"init": init, "init_path": str(Path(path).expanduser())}})
    cfg = pretrained_model_config(c, **({"max_len": int(max_len)} if max_len else {}))
    return dict(model=build_model(cfg), params=load_pretrained(c, cfg), tokenizer=load_pretrained_tokenizer(c))


@register_model("jaxprune")
class JaxpruneCliLM(JaxpruneLM):
    """JaxpruneLM built from `--model_args` (see the module docstring)."""

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> JaxpruneCliLM:
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> JaxpruneCliLM:
        args = dict(arg_dict)
        extra = additional_config or {}
        batch = args.pop("batch_size", None) or extra.get("batch_size")
        batch = int(batch) if str(batch).isdigit() and int(batch) > 1 else 32
        if "workdir" in args:
            unknown = set(args) - {"workdir", "stage"}
            if unknown or "stage" not in args:
                raise ValueError(f"model_args workdir=DIR needs stage=NAME and nothing else; got {sorted(args)}")
            loaded = load_stage(args["workdir"], str(args["stage"]))
        elif "init" in args:
            unknown = set(args) - {"init", "path", "max_len"}
            if unknown or "path" not in args or args["init"] not in ("gguf", "hf"):
                raise ValueError(f"model_args init=gguf|hf needs path=P (and optionally max_len=N); got {args}")
            loaded = load_checkpoint(str(args["init"]), str(args["path"]), args.get("max_len"))
        else:
            raise ValueError("model_args must name a run (workdir=DIR,stage=NAME) or a checkpoint "
                             "(init=gguf|hf,path=P)")
        return cls(batch_size=batch, **loaded)


def _argv_tasks(argv: list[str]) -> list[str]:
    for i, a in enumerate(argv):
        if a == "--tasks" and i + 1 < len(argv):
            return [t for t in argv[i + 1].split(",") if t]
        if a.startswith("--tasks="):
            return [t for t in a.split("=", 1)[1].split(",") if t]
    return []


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI with the model registered and the packaged tasks on the include path."""
    from lm_eval.__main__ import cli_evaluate

    from jaxprune.evaluation.lm_eval_backend import check_offline, task_manager

    argv = list(sys.argv[1:] if argv is None else argv)
    extra = None
    for i, a in enumerate(argv):  # the packaged tasks join any --include_path given
        if a == "--include_path" and i + 1 < len(argv):
            extra = argv[i + 1]
            argv[i + 1] = f"{LOCAL_TASKS}:{extra}"
        elif a.startswith("--include_path="):
            extra = a.split("=", 1)[1]
            argv[i] = f"--include_path={LOCAL_TASKS}:{extra}"
    if extra is None and argv and argv[0] not in ("-h", "--help"):
        argv += ["--include_path", str(LOCAL_TASKS)]
    tasks = _argv_tasks(argv)
    if tasks:
        try:
            check_offline(tasks, task_manager(extra))
        except LookupError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None
    os.environ.setdefault("DISABLE_MULTIPROC", "1")  # lm-eval's bootstrap would fork the (threaded) JAX process
    sys.argv = [sys.argv[0]] + argv
    cli_evaluate()


if __name__ == "__main__":
    main()
