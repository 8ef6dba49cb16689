"""Corpus perplexity (WikiText-2 test, books test): windows cover every token once, the NLL equals a
direct forward pass, subsampling keeps evenly spaced windows, and the harness reads the real files."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pytest

from jaxprune.data import corpus
from jaxprune.evaluation import harness, perplexity
from jaxprune.evaluation.scoring import ModuleApply
from jaxprune.models import ModelConfig, build_model, init_params

CFG = ModelConfig(vocab_size=512, max_len=64, n_layer=2, d_model=64, n_head=4, d_ff=256)  # as test_eval_scoring


@pytest.fixture(scope="module")
def model_and_params():
    model = build_model(CFG)
    return model, jax.jit(lambda k: init_params(model, k)[0])(jax.random.key(0))


@pytest.mark.parametrize("n", [2, 65, 129, 150, 1000])
def test_windows_predict_every_token_after_the_first_exactly_once(n):
    tokens = np.arange(1, n + 1)
    seqs, weights = perplexity.windows(tokens, 64)
    assert len(seqs) == math.ceil((n - 1) / 64)
    targets = seqs[:, 1:][weights == 1]
    np.testing.assert_array_equal(targets, tokens[1:])
    assert weights.sum() == n - 1


def test_windows_subsample_is_evenly_spaced_and_keeps_the_ends():
    tokens = np.arange(1, 64 * 10 + 2)  # exactly 10 full windows
    seqs, weights = perplexity.windows(tokens, 64, max_windows=4)
    assert [int(s[0]) for s in seqs] == [1 + 64 * w for w in (0, 3, 6, 9)]
    assert weights.sum() == 4 * 64


def test_too_short_corpus_is_a_data_error():
    with pytest.raises(corpus.DataError, match="too few"):
        perplexity.windows(np.array([5]), 64)


@functools.lru_cache(maxsize=None)
def _forward(model):
    return jax.jit(lambda p, t: model.apply({"params": p}, t))


def test_corpus_perplexity_equals_a_direct_forward_pass(model_and_params):
    model, params = model_and_params
    tokens = np.random.default_rng(0).integers(0, 512, 150)
    got = perplexity.corpus_perplexity(ModuleApply(model), params, tokens, max_len=64, batch_size=8)
    nll, per_window = 0.0, []
    for start in range(0, 149, 64):  # windows [0, 65), [64, 129), [128, 150)
        piece = tokens[start: start + 65]
        padded = np.zeros(64, np.int32)
        padded[: len(piece) - 1] = piece[:-1]
        logits = np.asarray(_forward(model)(params, padded[None]), np.float64)[0, : len(piece) - 1]
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        per_window.append(-logp[np.arange(len(piece) - 1), piece[1:]].sum())
        nll += per_window[-1]
    assert got["tokens"] == 149 and got["windows"] == 3
    # the windows (64, 64 and 21 predicted tokens) are the samples of the standard error
    tok = np.array([64.0, 64.0, 21.0])
    resid = np.array(per_window) - nll / 149 * tok
    assert got["ppl_stderr"] == pytest.approx(math.exp(nll / 149) * math.sqrt((resid ** 2).sum() / 6) / tok.mean(),
                                              rel=1e-4)
    assert got["loss"] == pytest.approx(nll / 149, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(nll / 149), rel=1e-5)


@pytest.mark.parametrize("task", ["wikitext2", "books_test"])
def test_harness_scores_the_real_corpus(task, model_and_params, data_dir, tmp_path):
    from jaxprune.data.tokenizer import train_bpe
    import ml_collections

    model, params = model_and_params
    texts, _ = perplexity.load_corpus_texts(task, data_dir)
    tok = train_bpe([texts[0][:200_000]], 512)
    tokens, _ = perplexity.load_corpus_tokens(task, tok, data_dir)
    eval_cfg = ml_collections.ConfigDict({"shots": 0, "max_examples": 0, "batch_size": 8, "ppl_windows": 4})
    m = harness.evaluate_tasks([task], model, params, tok, eval_cfg, data_dir, out_dir=tmp_path, tag="t")
    count = math.ceil((len(tokens) - 1) / 64)
    last = (len(tokens) - 1) - (count - 1) * 64
    assert m[f"{task}_windows"] == 4
    assert m[f"{task}_tokens"] == 3 * 64 + last
    assert 1.0 < m[f"{task}_ppl"] < 10 * 512  # an untrained model is near uniform over 512 tokens
    assert (tmp_path / "eval" / "t.md").read_text().count(task) == 1


def test_books_test_without_a_data_directory_fails_at_once():
    with pytest.raises(corpus.DataError, match="no TFDS copy"):
        perplexity.load_corpus_texts("books_test", None)
