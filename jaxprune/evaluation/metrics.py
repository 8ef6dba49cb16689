"""Answer normalisation, exact match and multiple-choice decisions (pure functions).

Definitions follow the SQuAD / GPT-3 / lm-evaluation-harness conventions:
exact match compares answers after lower-casing, deleting punctuation, deleting the
articles "a", "an", "the" and collapsing whitespace (any Unicode whitespace).

Standard errors are over the evaluated examples: for a mean (accuracy, exact match) the
sample standard deviation over sqrt(n), as lm-evaluation-harness reports; for a perplexity
exp(sum nll / sum tokens) the delta-method error of that ratio over examples (or windows),
times the perplexity.
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


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean: sample standard deviation (ddof 1) / sqrt(n); 0 below two values."""
    x = np.asarray(values, np.float64)
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0


def ratio_stderr(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Delta-method standard error of sum(numerators) / sum(denominators) over i.i.d. items
    (e.g. a loss per token from per-example NLLs and token counts); 0 below two items."""
    a = np.asarray(numerators, np.float64)
    b = np.asarray(denominators, np.float64)
    n = len(a)
    if n < 2:
        return 0.0
    residual = a - (a.sum() / b.sum()) * b
    return float(np.sqrt(np.sum(residual ** 2) / (n * (n - 1))) / b.mean())


def perplexity_stderr(nll: Sequence[float], tokens: Sequence[float]) -> float:
    """Standard error of exp(sum nll / sum tokens) (delta method: perplexity times the loss's error)."""
    a, b = np.asarray(nll, np.float64), np.asarray(tokens, np.float64)
    return float(np.exp(a.sum() / b.sum()) * ratio_stderr(a, b))
