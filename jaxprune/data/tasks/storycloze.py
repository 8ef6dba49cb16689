"""StoryCloze 2016: choose the right fifth sentence of a four-sentence story.

Local files (Rochester CSV; columns InputStoryid, InputSentence1..4,
RandomFifthSentenceQuiz1/2, AnswerRightEnding 1|2):
`storycloze/cloze_test_test__spring2016.csv` is evaluated (1871 stories) and
few-shot stories come from `storycloze/cloze_test_val__spring2016.csv`.
TFDS: `story_cloze/2016` splits `test` / `validation` (needs a manual download).
The context is the four sentences joined by single spaces (as TFDS does).
"""

from __future__ import annotations

import csv
from pathlib import Path

from jaxprune.data.tasks.base import Example, TaskData, TaskDataError, require_file, tfds_records

TEST_FILE = "storycloze/cloze_test_test__spring2016.csv"
VAL_FILE = "storycloze/cloze_test_val__spring2016.csv"
COLUMNS = ("InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
           "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding")


def read_local(path: Path) -> list[Example]:
    """Reads a Rochester StoryCloze CSV."""
    require_file(path)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise TaskDataError(f"{path}: line 1: missing columns {missing} (header: {header})")
        examples = []
        for row in reader:
            where = f"{path}: line {reader.line_num}"
            if None in row or any(row[c] is None for c in COLUMNS):
                raise TaskDataError(f"{where}: expected {len(header)} columns")
            if row["AnswerRightEnding"].strip() not in ("1", "2"):
                raise TaskDataError(f"{where}: AnswerRightEnding must be 1 or 2, got {row['AnswerRightEnding']!r}")
            examples.append(Example(
                context=" ".join(row[f"InputSentence{i}"] for i in range(1, 5)),
                choices=(row["RandomFifthSentenceQuiz1"], row["RandomFifthSentenceQuiz2"]),
                label=int(row["AnswerRightEnding"]) - 1))
    if not examples:
        raise TaskDataError(f"{path}: file has a header but no rows")
    return examples


def _from_tfds(split: str) -> list[Example]:
    return [Example(context=r["context"], choices=tuple(r["endings"]), label=int(r["label"]) - 1)
            for r in tfds_records("story_cloze/2016", split)]


def load(data_dir: Path | None) -> TaskData:
    if data_dir is not None:
        return TaskData("storycloze", "multiple_choice", read_local(data_dir / TEST_FILE),
                        read_local(data_dir / VAL_FILE), False, str(data_dir / TEST_FILE))
    return TaskData("storycloze", "multiple_choice", _from_tfds("test"), _from_tfds("validation"), False,
                    "tfds:story_cloze/2016/test")
