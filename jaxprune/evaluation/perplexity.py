"""Perplexity of a whole text corpus (WikiText-2 test, the books test split) as an evaluation task.

The corpus is tokenised with the model's tokenizer and cut into consecutive windows of
`max_len + 1` tokens that overlap by one token, so every token after the first is
predicted exactly once, with up to `max_len` tokens of left context (the last window
is shorter and padded; padding carries zero weight). With `max_windows` > 0 only that
many evenly spaced windows are scored (a subsample, reported as such by `tokens`).

    ppl = exp(total NLL / predicted tokens)

Its standard error (`ppl_stderr`) treats the windows as the samples (evaluation.metrics).

This is token-level perplexity under the model's own tokenizer: comparable between
pruned variants of one model, not between models with different tokenizers.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from jaxprune.data import corpus
from jaxprune.data.tokenizer import fingerprint
from jaxprune.evaluation.metrics import perplexity_stderr
from jaxprune.evaluation.scoring import ApplyFn, _fetch, _on_device, _put

# task name -> (corpus source, split, TFDS dataset for users without the data directory or None)
CORPORA = {
    "wikitext2": ("wikitext2", "test", "huggingface:wikitext/wikitext-2-v1"),
    "books_test": ("books", "test", None),
}


def windows(tokens: np.ndarray, max_len: int, max_windows: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(inputs+targets (W, max_len + 1) int32, weights (W, max_len) float32) covering `tokens`.

    Window w holds tokens[w·max_len : w·max_len + max_len + 1]; the weight of a target is 1
    where it is a real token. With max_windows > 0, that many evenly spaced windows are kept.
    """
    n = len(tokens)
    if n < 2:
        raise corpus.DataError(f"{n} tokens: too few to score")
    count = math.ceil((n - 1) / max_len)
    idx = np.arange(count)
    if 0 < max_windows < count:
        idx = np.linspace(0, count - 1, max_windows).round().astype(np.int64)
    seqs = np.zeros((len(idx), max_len + 1), np.int32)
    weights = np.zeros((len(idx), max_len), np.float32)
    for row, w in enumerate(idx):
        piece = tokens[w * max_len: w * max_len + max_len + 1]
        seqs[row, :len(piece)] = piece
        weights[row, :len(piece) - 1] = 1.0
    return seqs, weights


@functools.partial(jax.jit, static_argnums=0)
def _nll(apply_fn: ApplyFn, params: Any, seqs: jax.Array, weights: jax.Array) -> jax.Array:
    logits = apply_fn(params, seqs[:, :-1]).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    target = jnp.take_along_axis(logp, seqs[:, 1:, None], axis=-1)[..., 0]
    return -jnp.sum(target * weights, axis=1)  # per window


def corpus_perplexity(apply_fn: ApplyFn, params: Any, tokens: np.ndarray, *, max_len: int, batch_size: int,
                      max_windows: int = 0, batch_sharding: Any = None) -> dict[str, float]:
    """{"ppl", "ppl_stderr", "loss", "tokens", "windows"} of `tokens` (see the module docstring)."""
    seqs, weights = windows(tokens, max_len, max_windows)
    params = _on_device(params)
    pad = (-len(seqs)) % batch_size  # whole batches only: one compilation; padded rows weigh zero
    seqs = np.concatenate([seqs, np.zeros((pad, seqs.shape[1]), np.int32)])
    weights = np.concatenate([weights, np.zeros((pad, weights.shape[1]), np.float32)])
    per_window = []
    for b in range(0, len(seqs), batch_size):
        s, w = _put([seqs[b: b + batch_size], weights[b: b + batch_size]], batch_sharding)
        per_window.append(np.asarray(_fetch(_nll(apply_fn, params, s, w)), np.float64))
    real = len(seqs) - pad
    nll_w, tokens_w = np.concatenate(per_window)[:real], weights[:real].sum(1, dtype=np.float64)
    nll, n = float(nll_w.sum()), float(tokens_w.sum())
    return {"ppl": math.exp(nll / n), "ppl_stderr": perplexity_stderr(nll_w, tokens_w), "loss": nll / n,
            "tokens": int(n), "windows": int(real)}


def load_corpus_texts(name: str, data_dir: str | Path | None) -> tuple[list[str], str]:
    """The task's documents and where they were read from; raises DataError naming a bad file."""
    if name not in CORPORA:
        raise ValueError(f"unknown perplexity task {name!r}; known: {', '.join(CORPORA)}")
    source, split, tfds_name = CORPORA[name]
    if data_dir is None:
        if tfds_name is None:
            raise corpus.DataError(f"{name} has no TFDS copy: set data.data_dir or $JAXPRUNE_DATA_DIR to a "
                                   f"directory laid out like shared/data")
        texts = ["".join(corpus.load_texts(f"tfds:{tfds_name}", split, None))]  # one record per line there
        return texts, f"tfds:{tfds_name}/{split}"
    return corpus.load_texts(source, split, Path(data_dir)), f"{data_dir}:{source}/{split}"


_TOKENS: dict[tuple[str, str, str], tuple[np.ndarray, str]] = {}


def load_corpus_tokens(name: str, tokenizer: Tokenizer, data_dir: str | Path | None) -> tuple[np.ndarray, str]:
    """Tokens of the task's whole text (documents separated by EOS) and where they were read from;
    kept for the process, since a run evaluates the same corpora after every stage."""
    key = (name, fingerprint(tokenizer), str(data_dir))
    if key not in _TOKENS:
        texts, where = load_corpus_texts(name, data_dir)
        _TOKENS[key] = (corpus.tokenize(tokenizer, texts), where)
    return _TOKENS[key]
