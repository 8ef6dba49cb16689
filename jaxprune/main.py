"""Entry point: python -m jaxprune.main --config=configs/gpt_lambada.py --workdir=runs/x [--config.a.b=v]."""

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
    from jaxprune import experiment  # after flag parsing: keeps --help fast

    try:
        experiment.run(config, workdir, progress=_PROGRESS.value)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"results: {workdir}/results.jsonl")


if __name__ == "__main__":
    app.run(main)
