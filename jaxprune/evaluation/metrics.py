"""Answer normalisation, exact match and multiple-choice decisions (pure functions).

Definitions follow the SQuAD / GPT-3 / lm-evaluation-harness conventions:
exact match compares answers after lower-casing, deleting punctuation, deleting the
articles "a", "an", "the" and collapsing whitespace (any Unicode whitespace).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def _is_punctuation(ch: str) -> bool:
    return ch in string.punctuation or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop articles, collapse whitespace.

    >>> normalize_answer("The  Beatles!")
    'beatles'
    """
    text = text.lower()
    text = "".join(ch for ch in text if not _is_punctuation(ch))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Iterable[str]) -> bool:
    """True if the normalised prediction equals any normalised answer (alias).

    An answer that normalises to nothing never matches: otherwise an empty
    generation would be credited for gold answers such as "---", ")" or "*"
    (four NQ-open items and one TriviaQA item have one).
    """
    pred = normalize_answer(prediction)
    return bool(pred) and any(pred == normalize_answer(a) for a in answers)


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """The text before the first occurrence of any stop sequence."""
    end = len(text)
    for s in stops:
        i = text.find(s)
        if i != -1:
            end = min(end, i)
    return text[:end]


def choose(loglikelihoods: Sequence[float], lengths: Sequence[float] | None = None) -> int:
    """Index of the best choice: highest loglikelihood, or highest loglikelihood per unit length.

    Ties go to the first choice. `lengths` (the choices' lengths in characters) gives
    lm-evaluation-harness 0.4's `acc_norm` decision.
    """
    ll = np.asarray(loglikelihoods, np.float64)
    if lengths is not None:
        ll = ll / np.maximum(np.asarray(lengths, np.float64), 1.0)
    return int(np.argmax(ll))
