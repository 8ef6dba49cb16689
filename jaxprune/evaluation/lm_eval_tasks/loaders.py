"""`custom_dataset` functions of the packaged lm-eval tasks: documents from jaxprune's task readers.

lm-eval calls them with the task's metadata (plus `--metadata` from the command line) as
keyword arguments; `data_dir` there, else $JAXPRUNE_DATA_DIR, names the data directory.
Documents carry the fields of the hub datasets the original lm-eval tasks read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import datasets

from jaxprune.data.tasks import load_task


def _dir(data_dir: str | None) -> Path:
    d = data_dir or os.environ.get("JAXPRUNE_DATA_DIR")
    if not d:
        raise FileNotFoundError("the jaxprune offline lm-eval tasks need a data directory: set $JAXPRUNE_DATA_DIR "
                                "or pass --metadata '{\"data_dir\": \"/path/to/data\"}'")
    return Path(d)


def _dd(**splits: list[dict[str, Any]]) -> datasets.DatasetDict:
    return datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in splits.items()})


def lambada(data_dir: str | None = None, **_: Any) -> datasets.DatasetDict:
    """EleutherAI/lambada_openai: {"text"} (the passage; its last word is the target)."""
    data = load_task("lambada", _dir(data_dir))
    return _dd(test=[{"text": f"{ex.context} {ex.choices[0]}"} for ex in data.examples])


def _mc(examples) -> list[dict[str, Any]]:
    return [{"query": ex.context, "choices": list(ex.choices), "label": ex.label} for ex in examples]


def hellaswag(data_dir: str | None = None, **_: Any) -> datasets.DatasetDict:
    """HellaSwag validation, already cleaned as lm-eval's process_docs does: {"query", "choices", "label"}."""
    return _dd(validation=_mc(load_task("hellaswag", _dir(data_dir)).examples))


def storycloze(data_dir: str | None = None, **_: Any) -> datasets.DatasetDict:
    """StoryCloze 2016: {"query" (the four sentences), "choices" (two endings), "label"}; test and validation."""
    data = load_task("storycloze", _dir(data_dir))
    return _dd(validation=_mc(data.fewshot), test=_mc(data.examples))


def nq_open(data_dir: str | None = None, **_: Any) -> datasets.DatasetDict:
    """NQ-open dev (the hub's validation split): {"question", "answer": [...]}."""
    data = load_task("nq_open", _dir(data_dir))
    return _dd(validation=[{"question": ex.context, "answer": list(ex.answers)} for ex in data.examples])


def webqs(data_dir: str | None = None, **_: Any) -> datasets.DatasetDict:
    """WebQuestions: {"question", "answers": [...]}, test and train."""
    data = load_task("webquestions", _dir(data_dir))
    rows = lambda exs: [{"question": ex.context, "answers": list(ex.answers)} for ex in exs]  # noqa: E731
    return _dd(test=rows(data.examples), train=rows(data.fewshot))


def triviaqa(data_dir: str | None = None, **_: Any) -> datasets.DatasetDict:
    """TriviaQA (the data directory's 3000-question sample): {"question", "answer": {"value", "aliases"}}."""
    data = load_task("triviaqa", _dir(data_dir))
    return _dd(validation=[{"question": ex.context, "answer": {"value": ex.answers[0], "aliases": list(ex.answers)}}
                           for ex in data.examples])


_HEADING = re.compile(r"^ = [^=].* = $")


def wikitext(data_dir: str | None = None, **_: Any) -> datasets.DatasetDict:
    """WikiText-2 test, one {"page"} per article (split at top-level ' = Title = ' lines).

    The data directory holds the *tokenised* v1 test file (wiki.test.tokens: <unk>, ' @-@ '),
    not the raw v1 pages lm-eval's wikitext task reads, so word perplexities differ from it."""
    lines = (_dir(data_dir) / "wikitext-2" / "test.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    pages: list[list[str]] = []
    for line in lines:
        if _HEADING.match(line.rstrip("\n")) or not pages:
            pages.append([])
        pages[-1].append(line)
    return _dd(test=[{"page": "".join(p)} for p in pages if "".join(p).strip()])


def wikitext_detokenize(doc: dict[str, Any]) -> str:
    """lm-eval's wikitext detokenizer (its preprocess_wikitext module)."""
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer
    return wikitext_detokenizer(doc)


def wikitext_results(doc: dict[str, Any], results: Any) -> dict[str, Any]:
    from lm_eval.tasks.wikitext.preprocess_wikitext import process_results
    return process_results(doc, results)


def webqs_choices(doc: dict[str, Any]) -> list[str]:
    """Accepted answers, dropping any that extends another (as lm-eval's webqs task does)."""
    kept: list[str] = []
    for a in sorted(doc["answers"]):
        if not kept or not a.startswith(kept[-1]):
            kept.append(a)
    return kept


def webqs_target(doc: dict[str, Any]) -> list[int]:
    return list(range(len(webqs_choices(doc))))
