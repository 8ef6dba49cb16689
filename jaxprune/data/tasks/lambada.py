"""LAMBADA (OpenAI detokenized version): predict the last word of a passage.

Local file: `lambada/lambada_test.jsonl`, one {"text"} per line (5153 passages).
TFDS: `lambada` split `test`, field `passage` (the original tokenized text).
The target is the last space-separated word; scored with its leading space.
There is no train split with the same format, so few-shot passages come from the
test set itself, never the evaluated passage.
"""

from __future__ import annotations

from pathlib import Path

from jaxprune.data.tasks.base import Example, TaskData, TaskDataError, read_jsonl, tfds_records

FILE = "lambada/lambada_test.jsonl"


def split_last_word(text: str, where: str = "") -> Example:
    """'... about signs' -> Example(context='... about', choices=('signs',))."""
    text = text.rstrip()
    if " " not in text:
        raise TaskDataError(f"{where}: passage has no space-separated last word")
    context, word = text.rsplit(" ", 1)
    return Example(context=context, choices=(word,))


def read_local(path: Path) -> list[Example]:
    """Reads the OpenAI LAMBADA jsonl."""
    return [split_last_word(r["text"], f"{path}: line {n}") for n, r in read_jsonl(path, {"text": str})]


def load(data_dir: Path | None) -> TaskData:
    if data_dir is not None:
        path = data_dir / FILE
        examples = read_local(path)
        source = str(path)
    else:
        examples = [split_last_word(r["passage"], f"tfds:lambada/test record {i}")
                    for i, r in enumerate(tfds_records("lambada", "test"))]
        source = "tfds:lambada/test"
    return TaskData("lambada", "lambada", examples, examples, True, source)
