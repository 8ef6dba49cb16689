"""JSONL files of whole lines: append atomically, repair an interrupted append, read the complete lines.

Every results, metrics and evaluation file of a run is written by `append_jsonl`, so a kill leaves
at most a partial last line, which `repair_jsonl` cuts off and `read_records` skips. Standard library
only, so `jaxprune.report` stays quick to start.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxprune.data.errors import DataError


def repair_jsonl(path: Path) -> int:
    """Cuts off a final line without its newline (a write interrupted by a kill); returns bytes removed."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return 0
    try:
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return 0
        keep, pos = 0, size
        while pos > 0:  # the last newline, reading backwards in blocks
            start = max(0, pos - 65536)
            block = os.pread(fd, pos - start, start)
            i = block.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        os.ftruncate(fd, keep)
        os.fsync(fd)
    finally:
        os.close(fd)
    print(f"warning: {path}: removed a partial last line ({size - keep} bytes) left by an interrupted write",
          file=sys.stderr, flush=True)
    return size - keep


def append_jsonl(path: Path, record: dict) -> None:
    """Appends one JSON line with a single write and fsyncs it, so a kill leaves the line whole or cut
    off at the end (which `repair_jsonl`, run first, removes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_jsonl(path)
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"{path}: short write ({written} of {len(data)} bytes); disk full?")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path, hint: str = "", warn_partial: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every complete, non-blank line of `path`.

    A final line without its newline (an interrupted append) is skipped, with a warning on stderr when
    `warn_partial`; a malformed line raises DataError naming the file and line, followed by `hint`.
    """
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        if warn_partial:
            print(f"warning: {path}: ignoring a partial last line (an interrupted append)", file=sys.stderr, flush=True)
        lines = lines[:-1]
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {n}: malformed JSON ({e.msg}){hint}") from e
