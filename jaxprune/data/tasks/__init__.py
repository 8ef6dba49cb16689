"""Readers for the evaluation tasks: one module per task, one schema (`Example`) for all.

`load_task(name, data_dir)` reads a task from the offline data directory (laid out
like shared/data) or, when `data_dir` is None, from the TFDS catalog.
"""

from __future__ import annotations

from pathlib import Path

from jaxprune.data.tasks import hellaswag, lambada, nq_open, storycloze, triviaqa, webquestions
from jaxprune.data.tasks.base import Example, TaskData, TaskDataError

READERS = {
    "lambada": lambada.load,
    "hellaswag": hellaswag.load,
    "storycloze": storycloze.load,
    "nq_open": nq_open.load,
    "webquestions": webquestions.load,
    "triviaqa": triviaqa.load,
}


def load_task(name: str, data_dir: Path | str | None) -> TaskData:
    """The task's evaluated examples and few-shot pool; raises TaskDataError with file and line."""
    if name not in READERS:
        raise ValueError(f"unknown evaluation task {name!r}; known tasks: {', '.join(READERS)}")
    return READERS[name](Path(data_dir) if data_dir is not None else None)


__all__ = ["Example", "READERS", "TaskData", "TaskDataError", "load_task"]
