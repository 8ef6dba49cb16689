"""Scoring core: loglikelihoods equal a direct forward pass, bucketing changes nothing,
greedy generation stops and respects its length, and multiple choice follows the likelihoods.

One tiny model (2 layers, d_model 64, context 64, vocab 512) and one batch size are
shared by every test so the compiled functions are reused.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.data.tasks import Example, TaskData
from jaxprune.data.tokenizer import train_bpe
from jaxprune.evaluation import harness
from jaxprune.evaluation.scoring import ModuleApply, generate, length_buckets, loglikelihood
from jaxprune.models import ModelConfig, build_model, init_params

DATA = Path(os.environ.get("JAXPRUNE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
CFG = ModelConfig(vocab_size=512, max_len=64, n_layer=2, d_model=64, n_head=4, d_ff=256)
BATCH = 8


@pytest.fixture(scope="module")
def model_and_params():
    model = build_model(CFG)
    params = jax.jit(lambda k: init_params(model, k)[0])(jax.random.key(0))  # one compile, not op by op
    return model, params


@pytest.fixture(scope="module")
def tokenizer():
    with open(DATA / "lambada" / "lambada_test.jsonl") as f:
        texts = [json.loads(next(f))["text"] for _ in range(400)]
    return train_bpe(texts, 512)


def _requests(seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    shapes = [(1, 1), (3, 2), (10, 5), (20, 1), (40, 8), (63, 1), (70, 3), (5, 70), (30, 30), (2, 12), (15, 4)]
    return [(rng.integers(1, 512, c).tolist(), rng.integers(1, 512, t).tolist()) for c, t in shapes]


@functools.lru_cache(maxsize=None)
def _forward(model):
    return jax.jit(lambda p, t: model.apply({"params": p}, t))


def _logits(model, params, tokens: list[int]) -> np.ndarray:
    """Reference forward pass of one sequence, followed by random junk up to max_len (one compile);
    the junk cannot reach earlier positions of a causal model."""
    junk = np.random.default_rng(len(tokens)).integers(0, CFG.vocab_size, CFG.max_len - len(tokens)).tolist()
    return np.asarray(_forward(model)(params, jnp.array([tokens + junk], jnp.int32))[0, :len(tokens)])  # (T, V)


def _direct(model, params, ctx, cont):
    """Reference: log_softmax of the model's logits at the continuation positions."""
    full = (ctx + cont)[-(CFG.max_len + 1):]
    n = min(len(cont), len(full) - 1)
    logits = _logits(model, params, full[:-1])
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    targets = np.array(full[1:])
    pos = np.arange(len(full) - 1 - n, len(full) - 1)
    greedy = bool(np.all(np.asarray(logits).argmax(-1)[pos] == targets[pos]))
    return float(logp[pos, targets[pos]].sum()), greedy, n


def test_loglikelihood_equals_direct_forward_pass(model_and_params):
    model, params = model_and_params
    reqs = _requests()
    got = loglikelihood(ModuleApply(model), params, reqs, max_len=CFG.max_len, batch_size=BATCH)
    for (ctx, cont), r in zip(reqs, got):
        lp, greedy, n = _direct(model, params, ctx, cont)
        assert r.num_tokens == n
        assert r.logprob == pytest.approx(lp, abs=1e-4, rel=1e-6)
        assert r.is_greedy == greedy
    # Truncation: a continuation longer than the context keeps its last max_len tokens.
    assert got[7].num_tokens == CFG.max_len and got[0].num_tokens == 1 and got[6].num_tokens == 3


def test_is_greedy_when_continuation_is_the_argmax(model_and_params):
    model, params = model_and_params
    ctx = [5, 17, 300]
    cont = []
    for _ in range(4):  # greedy-decode 4 tokens with direct forward passes
        cont.append(int(np.argmax(_logits(model, params, ctx + cont)[-1])))
    wrong = cont[:3] + [(cont[3] + 1) % 512]
    ok, bad = loglikelihood(ModuleApply(model), params, [(ctx, cont), (ctx, wrong)], max_len=CFG.max_len,
                            batch_size=BATCH)
    assert ok.is_greedy and not bad.is_greedy and ok.num_tokens == bad.num_tokens == 4
    assert ok.logprob > bad.logprob


def test_bucketing_and_batch_size_do_not_change_scores(model_and_params):
    model, params = model_and_params
    reqs = _requests(1)
    runs = [loglikelihood(ModuleApply(model), params, reqs, max_len=CFG.max_len, batch_size=b, buckets=bk)
            for b, bk in [(BATCH, None), (BATCH, (64,)), (3, (32, 64))]]
    assert length_buckets(64) == (16, 32, 64) and length_buckets(100) == (16, 32, 64, 100)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert a.logprob == pytest.approx(b.logprob, abs=1e-5, rel=1e-6)  # float32 sums of up to 64 terms
            assert (a.is_greedy, a.num_tokens) == (b.is_greedy, b.num_tokens)


def test_requests_need_context_and_continuation(model_and_params):
    model, params = model_and_params
    with pytest.raises(ValueError, match="non-empty continuation"):
        loglikelihood(ModuleApply(model), params, [([1], [])], max_len=64, batch_size=BATCH)
    with pytest.raises(ValueError, match="non-empty context"):
        loglikelihood(ModuleApply(model), params, [([], [1])], max_len=64, batch_size=BATCH)


# ---------------------------------------------------------------------------
# Greedy generation with a stub LM: next token = table[current token]
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TableLM:
    """apply_fn whose logits put 10.0 on table[token] at every position (hashable: a tuple)."""

    table: tuple[int, ...]

    def __call__(self, params, tokens):
        nxt = jnp.asarray(self.table, jnp.int32)[tokens]  # (B, T)
        return 10.0 * jax.nn.one_hot(nxt, len(self.table))


def test_generation_stops_at_stop_token_and_respects_max_new_tokens():
    lm = TableLM(tuple((i + 1) % 64 for i in range(64)))  # i -> i + 1
    prompts = [[1, 2], [10], [20, 21, 22, 23], [60] * 50]
    out = generate(lm, None, prompts, max_len=64, max_new_tokens=6, batch_size=BATCH, stop_ids=[5, 25])
    assert out[0] == [3, 4, 5]  # stopped at 5 (stop token kept)
    assert out[1] == [11, 12, 13, 14, 15, 16]  # no stop: exactly max_new_tokens
    assert out[2] == [24, 25]  # a row stops early while others continue
    assert out[3] == [61, 62, 63, 0, 1, 2]  # prompt left-truncated to 64 - 6 tokens
    assert generate(lm, None, [[1, 2]], max_len=64, max_new_tokens=2, batch_size=BATCH, stop_ids=[5]) == [[3, 4]]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(lm, None, [[1]], max_len=64, max_new_tokens=64, batch_size=BATCH)


def test_generate_until_cuts_text_at_newline(tokenizer):
    the, nl, dot = (tokenizer.token_to_id(t) for t in ("Ġthe", "Ċ", "."))
    table = [the] * 512
    table[the] = nl  # "... the" -> "\n"
    table[nl] = dot
    lm = TableLM(tuple(table))
    stop_ids = harness.stop_token_ids(tokenizer, ["\n"])
    assert nl in stop_ids and the not in stop_ids and tokenizer.token_to_id("<|endoftext|>") in stop_ids
    (answer,) = harness.generate_until(lm, None, tokenizer, ["Q: who\nA:"], max_len=64, batch_size=BATCH)
    assert answer == " the"
    ids = generate(lm, None, [tokenizer.encode("Q: who\nA:").ids], max_len=64, max_new_tokens=24,
                   batch_size=BATCH, stop_ids=stop_ids)
    assert ids == [[the, nl]]


# ---------------------------------------------------------------------------
# Multiple choice end to end: a model that predicts "repeat the current token"
# ---------------------------------------------------------------------------
def _copy_params(params):
    """Blocks add nothing (zero output projections), no positions: logits[t] = LN(wte[x_t]) . wte, which
    peaks at x_t itself (|w|^2 / std ~ 64 vs cross terms ~ N(0, 8)), so the model repeats its input token."""
    def zero_block(path, x):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        return jnp.zeros_like(x) if "c_proj" in name or name.startswith("wpe") else x
    p = jax.tree_util.tree_map_with_path(zero_block, params)
    p["wte"]["embedding"] = jax.random.normal(jax.random.key(1), p["wte"]["embedding"].shape)
    return p


def test_multiple_choice_follows_the_model_end_to_end(model_and_params, tokenizer):
    model, params = model_and_params
    copy = _copy_params(params)
    for w in ("Ġthe", "Ġand", "Ġof"):
        assert tokenizer.token_to_id(w) is not None
    # The repeating ending is right in the first item (label 0) and the third (label 2); in the second
    # item the gold label points to the non-repeating ending, so acc must be 2/3.
    examples = [Example("of the the the", ("the the the", "and of and", "of and of"), 0),
                Example("and and and", ("of the of", "and and and and"), 0),
                Example("the of of", ("the and the", "and the and", "of of of"), 2)]
    data = TaskData("toy", "multiple_choice", examples, examples, True, "test")
    m = harness.evaluate_task(data, ModuleApply(model), copy, tokenizer, max_len=64, shots=0, max_examples=0,
                              batch_size=BATCH)
    se = math.sqrt((2 * (1 / 3) ** 2 + (2 / 3) ** 2) / 2 / 3)  # sample std of (1, 1, 0) over sqrt(3)
    assert m == {"acc": pytest.approx(2 / 3), "acc_norm": pytest.approx(2 / 3), "n": 3,
                 "acc_stderr": pytest.approx(se), "acc_norm_stderr": pytest.approx(se)}
    # LAMBADA path: the repeated word is reproduced greedily, another word is not.
    lam = TaskData("toy", "lambada", [Example("of the the", ("the",)), Example("of the the", ("and",))],
                   [], True, "test")
    first = harness.evaluate_task(dataclasses.replace(lam, examples=lam.examples[:1]), ModuleApply(model), copy,
                                  tokenizer, max_len=64, shots=0, max_examples=0, batch_size=BATCH)
    both = harness.evaluate_task(lam, ModuleApply(model), copy, tokenizer, max_len=64, shots=0, max_examples=0,
                                 batch_size=BATCH)
    assert first["acc"] == 1.0 and both["acc"] == 0.5 and first["ppl"] < 1.01 < both["ppl"]


def test_multiple_choice_metrics_from_given_loglikelihoods():
    lls = [[-10.0, -12.0], [-5.0, -4.0], [-9.0, -7.0]]
    choices = [["abcde", "x" * 20], ["ab", "abcdefgh"], ["éé", "abc"]]  # "éé" is 2 characters, 4 UTF-8 bytes
    m = harness.multiple_choice_metrics(lls, choices, [1, 1, 1])
    # acc picks 0, 1, 1 -> 2/3. acc_norm (per character, as lm-eval 0.4) picks 1 (-0.6 vs -2), 1 (-0.5 vs
    # -2.5) and 1 (-7/3 = -2.33 vs -9/2 = -4.5; per byte it would pick 0: -9/4 = -2.25) -> 3/3.
    se = math.sqrt((2 * (1 / 3) ** 2 + (2 / 3) ** 2) / 2 / 3)
    assert m == {"acc": pytest.approx(2 / 3), "acc_norm": 1.0, "acc_stderr": pytest.approx(se), "acc_norm_stderr": 0.0}


def test_encode_pairs_moves_trailing_space_and_splits_the_joint_encoding(tokenizer):
    text = "the man said that"
    (ctx, cont), (ctx2, cont2) = harness.encode_pairs(tokenizer, [("the man said", " that"), ("the man said ", "that")])
    whole = tokenizer.encode(text, add_special_tokens=False).ids
    assert ctx + cont == whole and ctx2 + cont2 == whole and (ctx, cont) == (ctx2, cont2)
    assert tokenizer.decode(cont) == " that"


def test_standard_errors_equal_direct_computations():
    from jaxprune.evaluation import metrics as M
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, 50).astype(float)
    assert M.mean_stderr(x) == pytest.approx(np.std(x, ddof=1) / np.sqrt(50), rel=1e-12)
    assert M.mean_stderr([1.0]) == 0.0
    nll, tok = rng.uniform(1, 30, 40), rng.integers(1, 12, 40).astype(float)
    # delta method for sum(a) / sum(b): var ~ sum((a_i - R b_i)^2) / (n (n - 1) mean(b)^2)
    r = nll.sum() / tok.sum()
    direct = math.sqrt(sum((a - r * b) ** 2 for a, b in zip(nll, tok)) / (40 * 39)) / tok.mean()
    assert M.ratio_stderr(nll, tok) == pytest.approx(direct, rel=1e-12)
    assert M.perplexity_stderr(nll, tok) == pytest.approx(math.exp(r) * direct, rel=1e-12)
    # equal per-token losses on every item: no spread, zero error
    assert M.ratio_stderr(2.0 * tok, tok) == pytest.approx(0.0, abs=1e-12)
    # the bootstrap agrees with the delta method on a large sample (a check that the formula is the right one)
    nll, tok = rng.gamma(3.0, 2.0, 2000) * 5, rng.integers(3, 8, 2000).astype(float)
    idx = rng.integers(0, 2000, (400, 2000))
    boot = np.std(nll[idx].sum(1) / tok[idx].sum(1))
    assert M.ratio_stderr(nll, tok) == pytest.approx(boot, rel=0.15)
