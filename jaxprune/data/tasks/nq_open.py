"""Natural Questions (open-domain): answer a Google query, no context.

Local file: `nq_open/NQ-open.dev.jsonl`, {"question", "answer": [...]} per line —
the 3610-question set reported as the NQ test set by ORQA, DPR and GPT-3. The data
directory has no train split, so few-shot questions come from the same file
(never the evaluated one). TFDS: `natural_questions_open` split `validation`,
few-shot from `train`.
"""

from __future__ import annotations

from pathlib import Path

from jaxprune.data.tasks.base import Example, TaskData, TaskDataError, read_jsonl, tfds_records

FILE = "nq_open/NQ-open.dev.jsonl"


def _example(question: str, answers: list[str], where: str) -> Example:
    if not answers:
        raise TaskDataError(f"{where}: empty answer list")
    return Example(context=question, answers=tuple(answers))


def read_local(path: Path) -> list[Example]:
    return [_example(r["question"], r["answer"], f"{path}: line {n}")
            for n, r in read_jsonl(path, {"question": str, "answer": list})]


def _from_tfds(split: str) -> list[Example]:
    return [_example(r["question"], r["answer"], f"tfds:natural_questions_open/{split} record {i}")
            for i, r in enumerate(tfds_records("natural_questions_open", split))]


def load(data_dir: Path | None) -> TaskData:
    if data_dir is not None:
        examples = read_local(data_dir / FILE)
        return TaskData("nq_open", "qa", examples, examples, True, str(data_dir / FILE))
    return TaskData("nq_open", "qa", _from_tfds("validation"), _from_tfds("train"), False,
                    "tfds:natural_questions_open/validation")
