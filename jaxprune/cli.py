"""The command-line error contract shared by `jaxprune.main` and `jaxprune.evaluate`.

Every user mistake ends the process with its documented exit code and one `error: ...` line on
stderr (a config error lists one line per problem), never a traceback:

    2  invalid config, config file, flag, data file, model file or workdir file (found before compute)
    3  the workdir is in use by another run
    4  an unusable checkpoint
    5  training diverged (NaN/Inf loss; the last good checkpoint is kept)
    6  pruning would empty a layer
    143  stopped by SIGTERM (preemption) after saving a checkpoint

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from collections.abc import Callable, Iterator

from absl import flags

CONFIG_EXIT = 2


def _exit_codes() -> tuple[tuple[type[BaseException], int], ...]:
    # Imported here: the entry points parse flags before importing JAX-heavy modules.
    from jaxprune.config import ConfigError
    from jaxprune.data.corpus import DataError
    from jaxprune.experiment import PruningError
    from jaxprune.training.checkpoint import CheckpointError
    from jaxprune.training.loop import Preempted, TrainingDiverged
    from jaxprune.workdir import WorkdirLocked

    return ((ConfigError, 2), (DataError, 2), (WorkdirLocked, 3), (CheckpointError, 4), (TrainingDiverged, 5),
            (PruningError, 6), (Preempted, Preempted.exit_code))


def fail(message: str, code: int = CONFIG_EXIT) -> None:
    """Prints `error: message` on stderr and exits with `code`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns the documented error types into their exit codes and one message (no traceback)."""
    from jaxprune.training.loop import Preempted

    codes = _exit_codes()
    try:
        yield
    except tuple(e for e, _ in codes) as e:
        code = next(c for cls, c in codes if isinstance(e, cls))
        print(f"{'preempted' if isinstance(e, Preempted) else 'error'}: {e}", file=sys.stderr, flush=True)
        sys.exit(code)


def _known_keys() -> list[str]:
    from jaxprune.config import default_config

    def walk(node, prefix):
        for k, v in node.items():
            if hasattr(v, "items"):
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}"
    return list(walk(default_config(), ""))


def _unknown_key_message(key: str, config_flag: str) -> str:
    close = difflib.get_close_matches(key, _known_keys(), n=1, cutoff=0.6)
    hint = f"; did you mean --{config_flag}.{close[0]}?" if close else " (README.md 'Config reference' lists every key)"
    return f"--{config_flag}.{key}: the config has no key {key!r}{hint}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def flags_parser(config_flag: str = "config") -> Callable[[list[str]], list[str]]:
    """An absl `flags_parser` that parses the flags and loads the config file, turning every mistake
    (unknown or misspelt key, missing file, a config file that raises, a bad value) into exit 2 and one line."""

    def parse(argv: list[str]) -> list[str]:
        name = argv_value(argv, config_flag)
        if not name and any(a.startswith(f"--{config_flag}.") for a in argv):
            fail(f"--{config_flag}.* overrides need --{config_flag}=FILE, e.g. --config=configs/gpt_lambada.py")
        try:
            rest = flags.FLAGS(argv)
        except flags.UnrecognizedFlagError as e:
            if e.flagname.startswith(config_flag + "."):
                fail(_unknown_key_message(e.flagname[len(config_flag) + 1:], config_flag))
            fail(f"unknown flag --{e.flagname} (--help lists the flags)")
        except flags.Error as e:
            if "Error whilst parsing config file" in str(e):  # get_config raised TypeError/ValueError
                fail(f"config file {name!r} raised {_last_line(e)}")
            fail(" ".join(str(e).split()))
        except Exception as e:  # the user's get_config, or an override of a key the config lacks
            if isinstance(e, OSError) and "earlier failure to load" in str(e):  # a file that cannot be read
                fail(f"config file {name!r} could not be loaded: {_last_line(e)}")
            known = set(_known_keys())
            for a in argv:
                key = a.split("=", 1)[0][len(config_flag) + 3:] if a.startswith(f"--{config_flag}.") else None
                if key and key not in known:
                    fail(_unknown_key_message(key, config_flag))
            fail(f"config file {name!r} raised {type(e).__name__}: {' '.join(str(e).split())}")
        _check_loaded(config_flag, name)
        return rest
    return parse


def _check_loaded(config_flag: str, name: str) -> None:
    """Exits 2 if config_flags deferred a config file it could not read (it raises only on first use)."""
    value = flags.FLAGS[config_flag].value
    error = getattr(value, "_error", None) if type(value).__name__ == "_ErrorConfig" else None
    if error is not None:
        fail(f"config file {name!r} could not be loaded: {_last_line(error)}")


def argv_value(argv: list[str], name: str) -> str:
    """The value of --name=VALUE in argv ('' if absent)."""
    for a in argv:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return ""
