"""One run per workdir: an exclusive lock file WORKDIR/.lock naming its owner.

The lock is created atomically (O_CREAT | O_EXCL) and holds `{"host", "pid"}`. A
second run on the same workdir is refused with a message naming the owner. A lock
left by a process that no longer exists on this host (kill -9, power loss) is stale:
it is taken over with a message. A lock from another host is never taken over, since
this host cannot tell whether that process is alive; the message says which host and
which file to delete once it is known to be dead.

    with WorkdirLock(workdir):
        ...  # the run
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".lock"


class WorkdirLocked(RuntimeError):
    """Another run holds the workdir (the message names its host and pid)."""


def read_owner(path: Path) -> dict | None:
    """The lock's {"host", "pid"}, or None if it vanished or is unreadable (a half-written lock)."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return None
    return owner


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _create(path: Path, owner: dict) -> bool:
    """Creates the lock file with `owner` in one atomic step; False if it already exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, json.dumps(owner).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _refusal(owner: dict, me: dict, path: Path) -> str | None:
    """Why `owner`'s lock stops this process, or None if it is ours or stale (its process is gone)."""
    workdir = path.parent
    if owner == me:
        return None
    if owner.get("host") != me["host"]:
        return (f"{workdir} is in use by pid {owner['pid']} on host {owner.get('host')!r} (lock file {path}); "
                f"this host cannot tell whether it is still running. Delete {path} once that run is known to "
                f"be stopped.")
    if pid_alive(owner["pid"]):
        return (f"{workdir} is in use by another run (pid {owner['pid']} on this host, lock file {path}); "
                f"wait for it to finish or use another --workdir")
    return None


def check(workdir: str | Path) -> None:
    """Raises WorkdirLocked if another live run holds the workdir (takes nothing)."""
    path = Path(workdir) / LOCK_NAME
    owner = read_owner(path)
    if owner is not None:
        refusal = _refusal(owner, {"host": socket.gethostname(), "pid": os.getpid()}, path)
        if refusal:
            raise WorkdirLocked(refusal)


def acquire(workdir: str | Path) -> bool:
    """Takes WORKDIR/.lock for this process; raises WorkdirLocked if another live run holds it.

    Returns True if taken now, False if this process already held it (so a nested user must not
    release it).
    """
    path = Path(workdir) / LOCK_NAME
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(3):
        if _create(path, me):
            return True
        owner = read_owner(path)
        if owner is None:
            # Unreadable: the owner died between creating and writing it (or it is being written right
            # now, which a second look tells apart).
            time.sleep(0.2)
            owner = read_owner(path)
            if owner is None and path.exists():
                print(f"warning: {path} is empty or unreadable; taking it over", file=sys.stderr, flush=True)
                path.unlink(missing_ok=True)
                continue
            if owner is None:
                continue
        if owner == me:
            return False
        refusal = _refusal(owner, me, path)
        if refusal:
            raise WorkdirLocked(refusal)
        print(f"warning: {path} was left by pid {owner['pid']}, which is no longer running; taking it over",
              file=sys.stderr, flush=True)
        if read_owner(path) == owner:  # narrows (does not close) the window where two runs take it over
            path.unlink(missing_ok=True)
    raise WorkdirLocked(f"could not take the lock {path}: another process keeps taking it")


def release(workdir: str | Path) -> None:
    """Removes WORKDIR/.lock if it is ours."""
    path = Path(workdir) / LOCK_NAME
    owner = read_owner(path)
    if owner == {"host": socket.gethostname(), "pid": os.getpid()}:
        path.unlink(missing_ok=True)


class WorkdirLock:
    """Context manager around acquire/release (a nested one leaves the outer lock in place)."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self._taken = False

    def __enter__(self) -> WorkdirLock:
        self._taken = acquire(self.workdir)
        return self

    def __exit__(self, *exc) -> None:
        if self._taken:
            release(self.workdir)
            self._taken = False
