"""Entry point: python -m jaxprune.main --config=configs/gpt_lambada.py --workdir=runs/x [--config.a.b=v].

Exit codes: 0 done; 2 invalid config or data file (found before any compute); 3 the
workdir is in use by another run; 4 an unusable checkpoint; 5 training diverged
(NaN/Inf loss; the last good checkpoint is kept); 6 pruning would empty a layer;
143 stopped by SIGTERM (preemption) after saving a checkpoint. After 143 or a
kill -9, rerunning the same command resumes.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxprune.config import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (get_config()), e.g. configs/gpt_lambada.py.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results "
                               "(default: runs/<config name>).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/gpt_lambada.py")
    workdir = _WORKDIR.value
    if workdir is None:
        name = flags.FLAGS["config"].config_filename.rsplit("/", 1)[-1].split(":")[0].removesuffix(".py")
        workdir = f"runs/{name}"
    from jaxprune import experiment, parallel  # after flag parsing: keeps --help fast

    parallel.initialize(config.mesh)  # multi-host: before anything touches devices

    from jaxprune.data.corpus import DataError
    from jaxprune.training.checkpoint import CheckpointError
    from jaxprune.training.loop import Preempted, TrainingDiverged
    from jaxprune.workdir import WorkdirLocked

    exit_codes = ((ConfigError, 2), (DataError, 2), (WorkdirLocked, 3), (CheckpointError, 4),
                  (TrainingDiverged, 5), (experiment.PruningError, 6), (Preempted, Preempted.exit_code))
    try:
        experiment.run(config, workdir, progress=_PROGRESS.value)
    except tuple(e for e, _ in exit_codes) as e:
        code = next(c for cls, c in exit_codes if isinstance(e, cls))
        print(f"{'preempted' if isinstance(e, Preempted) else 'error'}: {e}", file=sys.stderr, flush=True)
        sys.exit(code)
    print(f"results: {workdir}/results.jsonl")


if __name__ == "__main__":
    app.run(main)
