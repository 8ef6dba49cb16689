"""Entry point: python -m jaxprune.main --config=configs/gpt_lambada.py --workdir=runs/x [--config.a.b=v].

Exit codes: 0 done; 2 invalid config, flag, config file, data file, model file or
workdir file (found before any compute); 3 the workdir is in use by another run;
4 an unusable checkpoint; 5 training diverged (NaN/Inf loss; the last good checkpoint
is kept); 6 pruning would empty a layer; 143 stopped by SIGTERM (preemption) after
saving a checkpoint. Each prints one `error: ...` line (a config error: one line per
problem), no traceback. After 143 or a kill -9, rerunning the same command resumes.
A run that fails a check leaves no config.json behind, so the corrected command can
use the same workdir.
"""

from __future__ import annotations

import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxprune import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config()), e.g. configs/gpt_lambada.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results "
                               "(default: runs/<config name>).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars.")


def evaluate_command(argv: list[str], workdir: str) -> str:
    """The `jaxprune.evaluate` command for this run's config (same --config and --config.* overrides)."""
    args = [a for a in argv[1:] if a.startswith("--config")]
    return shlex.join(["python", "-m", "jaxprune.evaluate", *args, f"--workdir={workdir}", "--stages=all"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    config = _CONFIG.value
    if config is None:
        cli.fail("--config is required, e.g. --config=configs/gpt_lambada.py")
    workdir = _WORKDIR.value
    if workdir is None:
        name = flags.FLAGS["config"].config_filename.rsplit("/", 1)[-1].split(":")[0].removesuffix(".py")
        workdir = f"runs/{name}"
    from jaxprune import experiment, parallel  # after flag parsing: keeps --help fast

    with cli.user_errors():
        parallel.initialize(config.mesh)  # multi-host: before anything touches devices
        experiment.run(config, workdir, progress=_PROGRESS.value,
                       evaluate_command=evaluate_command(sys.argv, workdir))
    print(f"results: {workdir}/results.jsonl")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.flags_parser("config"))
