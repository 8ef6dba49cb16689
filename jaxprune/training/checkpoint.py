"""Orbax checkpoints of a TrainState plus JSON metadata (data position, stage, config digest).

Orbax writes each step into a temporary directory and renames it when complete, so a
run killed mid-write leaves the previous checkpoint intact (the leftover temporary
directory is removed on the next start). A finished checkpoint that was damaged
afterwards is caught on restore: the metadata JSON stores the state's layout (path,
shape, dtype of every array) and a sha256 over its bytes, both checked. Errors are
`CheckpointMismatch` (another config or model: never used) or `CheckpointCorrupt`
(damaged files: `restore_latest` falls back to the newest intact earlier step of the
same phase and moves the damaged ones aside to `<dir>/../damaged_checkpoints/`).
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (names the checkpoint and the mismatch)."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint of another config, phase or model shape: never restored."""


class CheckpointCorrupt(CheckpointError):
    """A checkpoint whose files are missing, truncated or altered."""


def state_layout(state: Any) -> dict[str, str]:
    """{path: "dtype[shape]"} of every array of a state (or of its ShapeDtypeStructs)."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): f"{np.dtype(x.dtype).name}{list(x.shape)}" for path, x in flat}


def state_digest(state: Any) -> str | None:
    """sha256 over every array's layout and bytes; None when some array is not fully on this host."""
    h = hashlib.sha256()
    for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return None
        a = np.ascontiguousarray(np.asarray(x))
        h.update(f"{jax.tree_util.keystr(path)}:{a.dtype.name}{list(a.shape)};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _layout_mismatch(saved: dict[str, str], want: dict[str, str]) -> str | None:
    """A one-line description of the first difference between two layouts, or None."""
    for path in want:
        if path not in saved:
            return f"it has no array {path} (this model has {want[path]})"
        if saved[path] != want[path]:
            return f"array {path} is {saved[path]} there, {want[path]} in this model"
    extra = [p for p in saved if p not in want]
    return f"it has arrays this model lacks ({', '.join(extra[:3])})" if extra else None


class Checkpointer:
    """CheckpointManager for one training phase's directory."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2, owner: bool = False):
        """`owner`: this process writes the directory, so leftover temporary dirs of a killed save are
        removed (never set it when reading another run's checkpoints: its save may be in progress)."""
        self.directory = Path(directory).absolute()
        self._mgr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                                 create=True, cleanup_tmp_directories=owner),
            item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._mgr.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Saves state and meta (plus the state's layout and sha256, checked by restore)."""
        meta = dict(meta, layout=state_layout(state), state_sha256=state_digest(state))
        self._mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                     meta=ocp.args.JsonSave(meta)), force=True)
        self._mgr.wait_until_finished()

    def restore(self, step: int, abstract_state: Any, expect_meta: dict | None = None) -> tuple[Any, dict]:
        """Restores `step` into the structure/shardings of abstract_state (ShapeDtypeStructs).

        Raises CheckpointMismatch when the checkpoint belongs to another config, phase or model
        shape, and CheckpointCorrupt when its files are unreadable or their bytes changed.
        """
        where = self.directory / str(step)
        try:
            meta = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
            if not isinstance(meta, dict):
                raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
        except Exception as e:
            raise CheckpointCorrupt(f"checkpoint {where}: metadata unreadable ({type(e).__name__}: "
                                    f"{str(e)[:300]})") from e
        for key, want in (expect_meta or {}).items():
            if meta.get(key) != want:
                raise CheckpointMismatch(f"checkpoint {where}: {key} is {meta.get(key)!r}, this run expects "
                                         f"{want!r}")
        want_layout = state_layout(abstract_state)
        saved_layout = meta.get("layout")
        if saved_layout is not None:
            diff = _layout_mismatch(saved_layout, want_layout)
            if diff:
                raise CheckpointMismatch(f"checkpoint {where} was saved for another model shape: {diff}")
        try:
            restored = self._mgr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state))).state
        except Exception as e:
            detail = f"{type(e).__name__}: {str(e)[:500]}"
            if saved_layout is not None:  # the layout matched, so the files themselves are broken
                raise CheckpointCorrupt(f"checkpoint {where}: state files unreadable ({detail})") from e
            raise CheckpointMismatch(f"checkpoint {where}: state does not match this model ({detail})") from e
        for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(abstract_state)):
            if got.shape != want.shape or got.dtype != want.dtype:
                raise CheckpointMismatch(f"checkpoint {where}: array {got.shape}/{got.dtype} where the model "
                                         f"has {want.shape}/{want.dtype}")
        saved_sha = meta.get("state_sha256")
        if saved_sha is not None:
            got_sha = state_digest(restored)
            if got_sha is not None and got_sha != saved_sha:
                raise CheckpointCorrupt(f"checkpoint {where}: restored state's sha256 {got_sha[:12]}... differs "
                                        f"from the saved {saved_sha[:12]}... (files altered or truncated)")
        return restored, meta

    def restore_latest(self, abstract_state: Any, expect_meta: dict | None = None) -> tuple[Any, dict] | None:
        """The newest intact checkpoint, or None if there is none at all.

        Damaged newer steps are skipped with a warning (and moved aside) only when an earlier step
        of the same phase restores intact with the expected meta; a mismatch (other config or
        model) or no intact step at all raises without changing anything on disk.
        """
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            return None
        damaged: list[tuple[int, CheckpointCorrupt]] = []
        for step in steps:
            try:
                state, meta = self.restore(step, abstract_state, expect_meta)
            except CheckpointCorrupt as e:
                damaged.append((step, e))
                continue
            for bad, err in damaged:
                print(f"warning: {err}; resuming from the intact step {step} instead", file=sys.stderr, flush=True)
                self._quarantine(bad)
            if damaged:
                self._mgr.reload()
            return state, meta
        raise CheckpointCorrupt("no intact checkpoint to resume from:\n  " + "\n  ".join(str(e) for _, e in damaged)
                                + f"\nremove the damaged steps from {self.directory} to start the phase over")

    def _quarantine(self, step: int) -> None:
        """Moves a damaged step out of the manager's sight, keeping it for inspection."""
        src = self.directory / str(step)
        dst_dir = self.directory.parent / "damaged_checkpoints"
        dst_dir.mkdir(parents=True, exist_ok=True)
        dst = dst_dir / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        src.rename(dst)
        print(f"warning: moved the damaged checkpoint {src} to {dst}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._mgr.close()


def abstract_like(state: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing a state, for restoring into."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
