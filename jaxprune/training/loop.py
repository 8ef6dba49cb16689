"""One training phase (pretraining, or fine-tuning after a pruning stage), resumable.

Side effects live here: checkpoints, metrics.jsonl, the progress bar. The numerics
are the pure jitted step from `step.py`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxprune.training.checkpoint import Checkpointer, abstract_like
from jaxprune.training.state import TrainState


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf (the message gives the step)."""


def append_jsonl(path: Path, record: dict) -> None:
    """Appends one JSON line and flushes it to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


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


def run_phase(phase: Phase, init_state: Callable[[], TrainState]) -> TrainState:
    """Trains `phase.steps` steps from the latest checkpoint of the phase, or from init_state()."""
    ckpt = Checkpointer(phase.directory / "checkpoints", phase.max_to_keep)
    meta = dict(phase.meta or {}, phase=phase.name)
    state = init_state()
    latest = ckpt.latest_step()
    if latest is not None:
        state, _ = ckpt.restore(latest, abstract_like(state), expect_meta=meta)
    start = int(state.step)
    if start >= phase.steps:
        if latest is None:  # a phase of zero steps still leaves its final state on disk
            ckpt.save(start, state, dict(meta, step=start))
        ckpt.close()
        return state

    bar = tqdm(total=phase.steps, initial=start, desc=phase.name, disable=not phase.progress,
               dynamic_ncols=True, mininterval=2.0)
    t_last, steps_since = time.perf_counter(), 0
    metrics = None
    for step in range(start, phase.steps):
        if phase.prune is not None:
            state = phase.prune(state, step)
        state, metrics = phase.train_step(state, phase.batch_at(step))
        steps_since += 1
        done = step + 1
        save_now = done % phase.checkpoint_every == 0 or done == phase.steps
        if done % phase.log_every == 0 or save_now:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not math.isfinite(m["loss"]):
                bar.close()
                raise TrainingDiverged(
                    f"{phase.name}: loss is {m['loss']} at step {done}; stopped without saving, the last good "
                    f"checkpoint is step {ckpt.latest_step()} in {ckpt.directory}")
            now = time.perf_counter()
            m["tokens_per_s"] = steps_since * phase.tokens_per_step / (now - t_last)
            t_last, steps_since = now, 0
            append_jsonl(phase.metrics_file, {"phase": phase.name, "step": done, **m})
            bar.set_postfix(loss=f"{m['loss']:.3f}", tok_s=f"{m['tokens_per_s']:.0f}")
        if phase.eval_every and done % phase.eval_every == 0 and phase.evaluate is not None and done < phase.steps:
            append_jsonl(phase.metrics_file, {"phase": phase.name, "step": done, **phase.evaluate(state.params)})
            t_last = time.perf_counter()
        if save_now:
            ckpt.save(done, state, dict(meta, step=done))
        bar.update(1)
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


def to_numpy_tree(tree: Any) -> Any:
    return jax.tree.map(np.asarray, tree)
