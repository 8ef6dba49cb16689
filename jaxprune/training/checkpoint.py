"""Orbax checkpoints of a TrainState plus JSON metadata (data position, stage, config digest).

Orbax writes each step into a temporary directory and renames it when complete, so a
run killed mid-write leaves the previous checkpoint intact; restore checks shapes,
dtypes and the config digest and names the checkpoint when anything disagrees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (names the checkpoint and the mismatch)."""


class Checkpointer:
    """CheckpointManager for one training phase's directory."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        self.directory = Path(directory).absolute()
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                                 create=True),
            item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=True)
        self._mgr.wait_until_finished()

    def restore(self, step: int, abstract_state: Any, expect_meta: dict | None = None) -> tuple[Any, dict]:
        """Restores `step` into the structure/shardings of abstract_state (ShapeDtypeStructs)."""
        where = self.directory / str(step)
        try:
            meta = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:
            raise CheckpointError(f"checkpoint {where}: metadata unreadable ({type(e).__name__}: {e})") from e
        for key, want in (expect_meta or {}).items():
            if meta.get(key) != want:
                raise CheckpointError(f"checkpoint {where}: {key} is {meta.get(key)!r}, this run expects {want!r}")
        try:
            restored = self._mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state))).state
        except Exception as e:
            raise CheckpointError(f"checkpoint {where}: state does not match this model "
                                  f"({type(e).__name__}: {str(e)[:500]})") from e
        for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract_state)):
            if got.shape != want.shape or got.dtype != want.dtype:
                raise CheckpointError(f"checkpoint {where}: array {got.shape}/{got.dtype} where the model "
                                      f"has {want.shape}/{want.dtype}")
        return restored, meta

    def close(self) -> None:
        self._mgr.close()


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing a state, for restoring into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
