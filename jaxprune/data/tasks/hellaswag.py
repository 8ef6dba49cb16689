"""HellaSwag: choose the most plausible of four endings.

Local file: `hellaswag/hellaswag_val_full.txt.bz2`, 6 lines per item: context
(`activity_label: ctx`, already cleaned), gold label 0-3, then the 4 endings
(10042 items). TFDS: `hellaswag` split `validation` (few-shot from `train`),
context built the same way and cleaned with `clean`.
Locally only the validation split exists, so few-shot items come from it.
"""

from __future__ import annotations

import bz2
import re
from pathlib import Path

from jaxprune.data.tasks.base import Example, TaskData, TaskDataError, require_file, tfds_records

FILE = "hellaswag/hellaswag_val_full.txt.bz2"
LINES_PER_ITEM = 6


def clean(text: str) -> str:
    """WikiHow markup removal (as applied to the local file): ' [title]' -> '. ', drop [header]/[step]/...

    Double spaces collapse to one.
    """
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read_local(path: Path) -> list[Example]:
    """Reads the 6-lines-per-item text format."""
    require_file(path)
    try:
        lines = bz2.decompress(path.read_bytes()).decode("utf-8").split("\n")
    except (OSError, ValueError) as e:
        raise TaskDataError(f"{path}: not a valid bz2-compressed UTF-8 file ({e})") from e
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise TaskDataError(f"{path}: file is empty")
    if len(lines) % LINES_PER_ITEM:
        start = len(lines) - len(lines) % LINES_PER_ITEM + 1
        raise TaskDataError(f"{path}: line {start}: incomplete item (each item is {LINES_PER_ITEM} lines: "
                            f"context, label, 4 endings)")
    examples = []
    for i in range(0, len(lines), LINES_PER_ITEM):
        ctx, label, *endings = lines[i:i + LINES_PER_ITEM]
        if label.strip() not in ("0", "1", "2", "3"):
            raise TaskDataError(f"{path}: line {i + 2}: label must be 0-3, got {label!r}")
        examples.append(Example(context=ctx, choices=tuple(endings), label=int(label)))
    return examples


def _from_tfds(split: str) -> list[Example]:
    return [Example(context=clean(r["activity_label"] + ": " + r["context"]),
                    choices=tuple(clean(e) for e in r["endings"]), label=int(r["label"]))
            for r in tfds_records("hellaswag", split)]


def load(data_dir: Path | None) -> TaskData:
    if data_dir is not None:
        path = data_dir / FILE
        examples = read_local(path)
        return TaskData("hellaswag", "multiple_choice", examples, examples, True, str(path))
    return TaskData("hellaswag", "multiple_choice", _from_tfds("validation"), _from_tfds("train"), False,
                    "tfds:hellaswag/validation")
