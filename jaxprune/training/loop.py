"""One training phase (pretraining, or fine-tuning after a pruning stage), resumable.

Side effects live here: checkpoints, metrics.jsonl, the progress bar. The numerics
are the pure jitted step from `step.py`.

Faults: SIGTERM (preemption) is turned into a flag checked after every step; the
loop then saves a checkpoint and raises `Preempted`, and the same command resumes.
A non-finite loss raises `TrainingDiverged` before anything is saved, so the newest
checkpoint on disk is the last good one. JSONL lines are appended by `jaxprune.jsonl` (one write +
fsync; a partial last line left by a kill is cut off, with a warning, before the
next append). After a resume, the metrics.jsonl lines of steps redone since the last
checkpoint appear twice; readers keep the last line of each (phase, step).

Every metrics.jsonl line (loss, grad_norm, learning rate, tokens/s; held-out metrics
with eval_every) also goes to TensorBoard event files in TENSORBOARD_DIR/<phase>, so
`tensorboard --logdir runs/` shows every phase of every run.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
from tqdm.auto import tqdm

from jaxprune.jsonl import append_jsonl
from jaxprune.training.checkpoint import Checkpointer, abstract_like
from jaxprune.training.state import TrainState


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf (the message gives the step)."""


class Preempted(RuntimeError):
    """SIGTERM arrived; the state is checkpointed and rerunning the same command resumes."""

    exit_code = 143  # 128 + SIGTERM, what schedulers expect from a process stopped by SIGTERM


# ---------------------------------------------------------------------------
# Preemption: SIGTERM -> flag, checked after every step
# ---------------------------------------------------------------------------
_sigterm = threading.Event()


def _on_sigterm(signum, frame) -> None:
    _sigterm.set()


def preemption_requested() -> bool:
    """Whether SIGTERM arrived while `handle_sigterm` was active."""
    return _sigterm.is_set()


@contextlib.contextmanager
def handle_sigterm():
    """Within the block SIGTERM sets a flag instead of ending the process (nested uses share it).

    Outside the main thread (where signal handlers cannot be installed) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is _on_sigterm:
        yield
        return
    _sigterm.clear()  # a new run starts with no pending preemption
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Phase:
    """What a phase needs besides its state: the step, the data and where to write."""

    name: str
    directory: Path  # checkpoints go to directory/checkpoints
    steps: int
    train_step: Callable[[TrainState, Any], tuple[TrainState, dict]]  # jitted
    batch_at: Callable[[int], Any]  # phase step -> device batch
    tokens_per_step: int
    metrics_file: Path
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 100
    max_to_keep: int = 2
    evaluate: Callable[[Any], dict] | None = None  # params -> metrics, for eval_every
    prune: Callable[[TrainState, int], TrainState] | None = None  # gradual pruning, called before each step
    meta: dict | None = None  # saved with, and checked against, every checkpoint
    progress: bool = True
    lr_schedule: Callable[[int], Any] | None = None  # optimizer step -> learning rate, logged as "lr"
    tensorboard_dir: Path | None = None  # scalars also go to TENSORBOARD_DIR/<phase name> (None: off)


class ScalarWriter:
    """TensorBoard scalars of one phase (tensorboardX event files); a no-op without a directory."""

    def __init__(self, directory: Path | None, prefix: str = "train"):
        self.prefix = prefix
        self._writer = None
        if directory is not None:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(logdir=str(directory), flush_secs=30)

    def write(self, step: int, scalars: dict, prefix: str | None = None) -> None:
        if self._writer is None:
            return
        for k, v in scalars.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self._writer.add_scalar(f"{prefix or self.prefix}/{k}", v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_scalars(directory: Path | None, step: int, scalars: dict, prefix: str) -> None:
    """Writes one step of scalars (e.g. a stage's final evaluation) to DIRECTORY's event files."""
    writer = ScalarWriter(directory, prefix)
    writer.write(step, scalars)
    writer.close()


def run_phase(phase: Phase, init_state: Callable[[], TrainState]) -> TrainState:
    """Trains `phase.steps` steps from the latest checkpoint of the phase, or from init_state()."""
    ckpt = Checkpointer(phase.directory / "checkpoints", phase.max_to_keep, owner=True)
    meta = dict(phase.meta or {}, phase=phase.name)
    state = init_state()
    restored = ckpt.restore_latest(abstract_like(state), expect_meta=meta)
    if restored is not None:
        state, _ = restored
    start = int(state.step)
    if start >= phase.steps:
        if restored is None:  # a phase of zero steps still leaves its final state on disk
            ckpt.save(start, state, dict(meta, step=start))
        ckpt.close()
        return state
    with handle_sigterm():
        return _train(phase, ckpt, meta, state, start)


def _diverged(phase: Phase, m: dict, done: int, ckpt: Checkpointer) -> TrainingDiverged:
    bad = " and ".join(f"{k} is {m[k]}" for k in sorted(m, key=lambda k: k != "loss") if not math.isfinite(m[k]))
    last = ckpt.latest_step()
    kept = f"step {last} in {ckpt.directory}" if last is not None else f"none yet in {ckpt.directory}"
    return TrainingDiverged(f"{phase.name}: {bad} at step {done}; stopped without saving, the last good "
                            f"checkpoint of this phase is {kept}")


def _train(phase: Phase, ckpt: Checkpointer, meta: dict, state: TrainState, start: int) -> TrainState:
    """Steps start..phase.steps with logging, checkpoints and the SIGTERM check after each step."""
    bar = tqdm(total=phase.steps, initial=start, desc=phase.name, disable=not phase.progress,
               dynamic_ncols=True, mininterval=2.0)
    tb = ScalarWriter(phase.tensorboard_dir / phase.name if phase.tensorboard_dir and jax.process_index() == 0
                      else None)
    try:
        return _steps(phase, ckpt, meta, state, start, bar, tb)
    finally:
        tb.close()


def _steps(phase: Phase, ckpt: Checkpointer, meta: dict, state: TrainState, start: int, bar, tb) -> TrainState:
    t_last, steps_since = time.perf_counter(), 0
    metrics = None
    for step in range(start, phase.steps):
        if phase.prune is not None:
            state = phase.prune(state, step)
        state, metrics = phase.train_step(state, phase.batch_at(step))
        steps_since += 1
        done = step + 1
        save_now = done % phase.checkpoint_every == 0 or done == phase.steps
        preempted = preemption_requested()
        if done % phase.log_every == 0 or save_now or preempted:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not all(map(math.isfinite, m.values())):  # loss or grad_norm: checked before every save
                bar.close()
                err = _diverged(phase, m, done, ckpt)
                ckpt.close()
                raise err
            now = time.perf_counter()
            m["tokens_per_s"] = steps_since * phase.tokens_per_step / (now - t_last)
            if phase.lr_schedule is not None:  # the rate this step's update used (optax counts from 0)
                m["lr"] = float(phase.lr_schedule(step))
            t_last, steps_since = now, 0
            if jax.process_index() == 0:  # one writer on multi-host runs
                append_jsonl(phase.metrics_file, {"phase": phase.name, "step": done, **m})
                tb.write(done, m)
            bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m['tokens_per_s']:.0f}")
        if phase.eval_every and done % phase.eval_every == 0 and phase.evaluate is not None and done < phase.steps:
            evaluated = phase.evaluate(state.params)  # on every host: the evaluation is a collective
            if jax.process_index() == 0:
                append_jsonl(phase.metrics_file, {"phase": phase.name, "step": done, **evaluated})
                tb.write(done, evaluated, prefix="eval")
            t_last = time.perf_counter()
        if save_now or preempted:
            ckpt.save(done, state, dict(meta, step=done))
        bar.update(1)
        if preempted:
            bar.close()
            ckpt.close()
            raise Preempted(f"{phase.name}: stopped by SIGTERM after step {done}; saved the checkpoint "
                            f"{ckpt.directory / str(done)}. Rerun the same command to resume.")
    bar.close()
    ckpt.close()
    return state


def final_state(directory: Path, abstract_state: Any, meta: dict | None = None) -> TrainState | None:
    """The last checkpoint of a finished phase, or None if it has none."""
    ckpt = Checkpointer(directory / "checkpoints")
    latest = ckpt.latest_step()
    if latest is None:
        return None
    state, _ = ckpt.restore(latest, abstract_state, expect_meta=meta)
    ckpt.close()
    return state
