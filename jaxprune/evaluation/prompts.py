"""Prompt templates for every task, and the deterministic choice of few-shot demonstrations.

Templates (k demonstrations, then the evaluated item, joined by FEWSHOT_DELIMITER "\\n\\n"):

* LAMBADA: the passage itself. Prompt = passage without its last word; target =
  " " + last word. A demonstration is a whole other passage (its last word included).
  Zero-shot: just the passage. (GPT-3's fill-in-the-blank format is not used.)
* Multiple choice (HellaSwag, StoryCloze): prompt = the context; each choice is
  scored as the continuation " " + ending. A demonstration is context + " " + the
  correct ending.
    HellaSwag:  "Roof shingle removal: A man is sitting on a roof. he" + " starts pulling up roofing on a roof."
    StoryCloze: "<sentence 1> <sentence 2> <sentence 3> <sentence 4>" + " <fifth sentence>"
* QA (NQ-open, WebQuestions, TriviaQA): prompt = "Q: {question}\\nA:"; the model
  generates greedily and the answer is what precedes the first newline. A
  demonstration is "Q: {question}\\nA: {answers[0]}".
    "Q: who wrote he ain't heavy he's my brother lyrics\\nA:"  -> " Bobby Scott\\n..."

Few-shot demonstrations are drawn without replacement from the task's few-shot pool
(train/dev split, see jaxprune/data/tasks) by a generator seeded with
(FEWSHOT_SEED, example index), so an item's prompt does not depend on batch size or
on how many items are evaluated; when the pool is the evaluated split, the evaluated
item is never its own demonstration (GPT-3 paper, section 2).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxprune.data.tasks.base import Example

TARGET_DELIMITER = " "  # between a prompt and its target / choice
FEWSHOT_DELIMITER = "\n\n"  # between demonstrations and the evaluated item
FEWSHOT_SEED = 1234
QA_STOP = ("\n",)  # generation for QA stops at the first newline


def qa_prompt(question: str) -> str:
    """'Q: {question}\\nA:'."""
    return f"Q: {question}\nA:"


def query(kind: str, ex: Example) -> str:
    """The evaluated item's prompt (no demonstrations)."""
    if kind == "qa":
        return qa_prompt(ex.context)
    if kind in ("lambada", "multiple_choice"):
        return ex.context
    raise ValueError(f"unknown task kind {kind!r}")


def targets(kind: str, ex: Example) -> list[str]:
    """The continuations scored after the prompt: (' word',) for LAMBADA, ' ' + each ending for MC."""
    if kind not in ("lambada", "multiple_choice"):
        raise ValueError(f"task kind {kind!r} is generated, not scored")
    return [TARGET_DELIMITER + c for c in ex.choices]


def demonstration(kind: str, ex: Example) -> str:
    """A solved item, as shown in a few-shot prompt."""
    if kind == "qa":
        return qa_prompt(ex.context) + TARGET_DELIMITER + ex.answers[0]
    return ex.context + TARGET_DELIMITER + ex.choices[ex.label]


def fewshot_indices(pool_size: int, k: int, index: int, exclude_self: bool, seed: int = FEWSHOT_SEED) -> list[int]:
    """k distinct pool indices for the item at `index` (deterministic in (seed, index))."""
    candidates = pool_size - (1 if exclude_self and index < pool_size else 0)
    if k > candidates:
        raise ValueError(f"cannot draw {k} few-shot examples from a pool of {candidates}")
    if k == 0:
        return []
    rng = np.random.default_rng([seed, index])
    picks = rng.choice(candidates, size=k, replace=False)
    if exclude_self:  # map [0, pool_size - 1) onto the pool without `index`
        picks = np.where(picks >= index, picks + 1, picks)
    return [int(i) for i in picks]


def build_prompt(kind: str, ex: Example, shots: Sequence[Example]) -> str:
    """Demonstrations, then the item's query, joined by FEWSHOT_DELIMITER."""
    return FEWSHOT_DELIMITER.join([demonstration(kind, s) for s in shots] + [query(kind, ex)])
