"""The example schema shared by every evaluation task, and the helpers its readers use.

Every reader turns its source (a file in the offline data directory, or the TFDS
catalog) into a list of `Example`s; prompt construction and scoring never see the
source format. Errors name the file and the line, so a broken file is fixed in one go.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxprune.data import tfds_catalog
from jaxprune.data.corpus import DataError


class TaskDataError(DataError):
    """A task file (or TFDS dataset) that is missing, empty, malformed or unreachable."""


@dataclasses.dataclass(frozen=True)
class Example:
    """One evaluation item, whatever the task.

    Attributes:
      context: LAMBADA: the passage without its last word; multiple choice: the
        context the endings continue; QA: the question.
      choices: LAMBADA: (last word,); multiple choice: the endings. Stored without
        the separating space (prompts.TARGET_DELIMITER adds it).
      label: index of the correct choice (0 for LAMBADA and QA).
      answers: QA only: every accepted answer (aliases included); answers[0] is the
        target shown in few-shot demonstrations.
    """

    context: str
    choices: tuple[str, ...] = ()
    label: int = 0
    answers: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TaskData:
    """The evaluated examples of a task and the pool its few-shot demonstrations come from.

    `fewshot_is_eval` says the pool *is* the evaluated split (the data directory has
    no train split for that task); prompts then skip the evaluated item itself.
    """

    name: str
    kind: str  # "lambada" | "multiple_choice" | "qa"
    examples: list[Example]
    fewshot: list[Example]
    fewshot_is_eval: bool
    source: str  # where the examples were read from (a path or tfds:NAME/split)


def require_file(path: Path) -> Path:
    """Raises TaskDataError unless `path` is a non-empty file."""
    if not path.is_file():
        raise TaskDataError(f"{path}: file does not exist (is the data directory laid out like shared/data?)")
    if path.stat().st_size == 0:
        raise TaskDataError(f"{path}: file is empty")
    return path


def read_jsonl(path: Path, fields: dict[str, type]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (line number, record) for every non-blank line, checking each field's type."""
    require_file(path)
    n_records = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskDataError(f"{path}: line {lineno}: malformed JSON ({e.msg})") from e
            check_fields(record, fields, f"{path}: line {lineno}")
            n_records += 1
            yield lineno, record
    if n_records == 0:
        raise TaskDataError(f"{path}: file has no records")


def read_json_array(path: Path, fields: dict[str, type]) -> list[dict[str, Any]]:
    """Reads a JSON array of objects, checking each field's type."""
    require_file(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TaskDataError(f"{path}: line {e.lineno}: malformed JSON ({e.msg})") from e
    if not isinstance(records, list) or not records:
        raise TaskDataError(f"{path}: expected a non-empty JSON array of objects")
    for i, record in enumerate(records):
        check_fields(record, fields, f"{path}: entry {i}")
    return records


def check_fields(record: Any, fields: dict[str, type], where: str) -> None:
    """Raises TaskDataError (prefixed by `where`) if a field is missing or has the wrong type."""
    if not isinstance(record, dict):
        raise TaskDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for key, typ in fields.items():
        if key not in record:
            raise TaskDataError(f"{where}: missing field {key!r}")
        value = record[key]
        if not isinstance(value, typ):
            raise TaskDataError(f"{where}: field {key!r} should be {typ.__name__}, got {type(value).__name__}")
        if typ is list and not all(isinstance(v, str) for v in value):
            raise TaskDataError(f"{where}: field {key!r} should be a list of strings")


# ---------------------------------------------------------------------------
# TFDS (online catalog), failing fast when offline
# ---------------------------------------------------------------------------
def _to_python(value: Any) -> Any:
    """bytes -> str, numpy arrays -> lists, recursively (TFDS data sources return numpy)."""
    import numpy as np

    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return [_to_python(v) for v in value.tolist()] if value.ndim else _to_python(value.item())
    if isinstance(value, dict):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_python(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def tfds_records(name: str, split: str) -> list[dict[str, Any]]:
    """Every record of a TFDS split as plain Python; never blocks for long without internet.

    A prepared dataset is read directly. An unprepared one is downloaded only if a
    3-second connection test succeeds; otherwise a TaskDataError tells the user to
    use the offline data directory instead.
    """
    builder = tfds_catalog.prepared_builder(name, None, TaskDataError)
    return [_to_python(r) for r in builder.as_data_source(split=split)]
