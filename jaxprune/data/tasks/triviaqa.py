"""TriviaQA (closed book): answer a trivia question, judged against all aliases.

Local file: `triviaqa/triviaqa_sm_sub.jsonl`, {"context": "Question: ...\\nAnswer:",
"answer", "aliases": [...]} per line — a 3000-question sample (MosaicML), not the
full dev set. The question is taken out of "context" so every QA task shares one
prompt template (prompts.py). Few-shot questions come from the same file (never the
evaluated one). TFDS: `trivia_qa/unfiltered.nocontext` split `validation`, few-shot
from `train`; answers = value + aliases.
"""

from __future__ import annotations

from pathlib import Path

from jaxprune.data.tasks.base import Example, TaskData, TaskDataError, read_jsonl, tfds_records

FILE = "triviaqa/triviaqa_sm_sub.jsonl"
PREFIX, SUFFIX = "Question:", "\nAnswer:"


def question_from_context(context: str, where: str) -> str:
    """'Question: Who ...?\\nAnswer:' -> 'Who ...?'."""
    text = context.strip()
    if not (text.startswith(PREFIX) and text.endswith(SUFFIX.strip()) and "\n" in text):
        raise TaskDataError(f"{where}: context is not of the form 'Question: ...\\nAnswer:'")
    return text[len(PREFIX):text.rindex("\n")].strip()


def _answers(answer: str, aliases: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([answer, *aliases]))  # the canonical answer first, no duplicates


def read_local(path: Path) -> list[Example]:
    examples = []
    for n, r in read_jsonl(path, {"context": str, "answer": str, "aliases": list}):
        where = f"{path}: line {n}"
        examples.append(Example(context=question_from_context(r["context"], where),
                                answers=_answers(r["answer"], r["aliases"])))
    return examples


def _from_tfds(split: str) -> list[Example]:
    return [Example(context=r["question"], answers=_answers(r["answer"]["value"], r["answer"]["aliases"]))
            for r in tfds_records("trivia_qa/unfiltered.nocontext", split)]


def load(data_dir: Path | None) -> TaskData:
    if data_dir is not None:
        examples = read_local(data_dir / FILE)
        return TaskData("triviaqa", "qa", examples, examples, True, str(data_dir / FILE))
    return TaskData("triviaqa", "qa", _from_tfds("validation"), _from_tfds("train"), False,
                    "tfds:trivia_qa/unfiltered.nocontext/validation")
