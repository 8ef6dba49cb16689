"""WebQuestions: answer Google Suggest questions whose answers are Freebase entities.

Local files (brmson format, a JSON array of {"qId", "qText", "answers": [...]}):
`webquestions/main/test.json` is evaluated (2032 questions); few-shot questions come
from `webquestions/main/trainmodel.json` (part of the original train split).
TFDS: `web_questions` split `test`, few-shot from `train` (fields question, answers).
"""

from __future__ import annotations

from pathlib import Path

from jaxprune.data.tasks.base import Example, TaskData, TaskDataError, read_json_array, tfds_records

TEST_FILE = "webquestions/main/test.json"
TRAIN_FILE = "webquestions/main/trainmodel.json"


def read_local(path: Path) -> list[Example]:
    examples = []
    for i, r in enumerate(read_json_array(path, {"qText": str, "answers": list})):
        if not r["answers"]:
            raise TaskDataError(f"{path}: entry {i}: empty answer list")
        examples.append(Example(context=r["qText"], answers=tuple(r["answers"])))
    return examples


def _from_tfds(split: str) -> list[Example]:
    return [Example(context=r["question"], answers=tuple(r["answers"]))
            for r in tfds_records("web_questions", split)]


def load(data_dir: Path | None) -> TaskData:
    if data_dir is not None:
        return TaskData("webquestions", "qa", read_local(data_dir / TEST_FILE), read_local(data_dir / TRAIN_FILE),
                        False, str(data_dir / TEST_FILE))
    return TaskData("webquestions", "qa", _from_tfds("test"), _from_tfds("train"), False, "tfds:web_questions/test")
