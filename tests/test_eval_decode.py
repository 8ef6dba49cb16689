"""Target-only scoring and KV-cache generation give the results of the full-length forward passes.

`Full` wraps a model as a plain apply_fn (no `select`, no `decode`), which takes the
paths the library had before: full (B, T, V) logits for scoring, the whole buffer rerun
for every generated token. `ModuleApply` takes the new ones. Tiny models (context 64),
one per architecture: GPT-2, LLaMA with grouped-query attention and a sliding window,
and a compacted GPT-2 with per-layer widths (one block with no heads left).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxprune.evaluation.scoring import ModuleApply, Sampling, generate, loglikelihood
from jaxprune.models import ModelConfig, build_model, init_params

CONFIGS = {
    "gpt2": ModelConfig(vocab_size=512, max_len=64, n_layer=2, d_model=64, n_head=4, d_ff=256),
    "llama": ModelConfig(arch="llama", vocab_size=512, max_len=64, n_layer=2, d_model=64, n_head=4, n_kv_head=2,
                         d_ff=172, sliding_window=24),
    "compacted": ModelConfig(vocab_size=512, max_len=64, n_layer=2, d_model=64, n_head=4, d_ff=256,
                             layer_d_ff=(100, 30), layer_n_head=(3, 0)),
}
BATCH, NEW = 4, 12


@dataclasses.dataclass(frozen=True)
class Full:
    """The model as a bare apply_fn: full-length logits only."""

    module: Any

    def __call__(self, params, tokens):
        return self.module.apply({"params": params}, tokens)


@functools.lru_cache(maxsize=None)
def _build(name: str):
    m = build_model(CONFIGS[name])
    # scaled weights: peaked next-token distributions, so greedy decisions are far from ties
    params = jax.jit(lambda k: jax.tree.map(lambda x: 3 * x, init_params(m, k)[0]))(jax.random.key(0))
    return name, m, params


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    return _build(request.param)


def _prompts(seed: int = 0) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 512, n).tolist() for n in (1, 3, 10, 17, 30, 45, 52, 5, 60)]


def test_target_only_scoring_equals_full_logits(model):
    _, m, params = model
    rng = np.random.default_rng(1)
    reqs = [(p, rng.integers(1, 512, n).tolist()) for p, n in zip(_prompts(), (1, 2, 3, 9, 1, 20, 4, 40, 3))]
    old = loglikelihood(Full(m), params, reqs, max_len=64, batch_size=BATCH)
    new = loglikelihood(ModuleApply(m), params, reqs, max_len=64, batch_size=BATCH)
    for a, b in zip(old, new):
        assert b.logprob == pytest.approx(a.logprob, abs=1e-5, rel=1e-6)
        assert (b.is_greedy, b.num_tokens) == (a.is_greedy, a.num_tokens)
    assert [r.num_tokens for r in new] == [1, 2, 3, 9, 1, 20, 4, 40, 3]


def test_decode_logits_equal_full_forward(model):
    """Prefill 20 positions into a 32-slot cache, then one token per step: each step's logits are the
    full forward pass's logits at that position."""
    _, m, params = model
    tokens = jnp.asarray(np.random.default_rng(2).integers(1, 512, (2, 32)), jnp.int32)
    full = m.apply({"params": params}, tokens)
    pos = jnp.broadcast_to(jnp.arange(20), (2, 20))
    decode = jax.jit(ModuleApply(m).decode, static_argnames="cache_len")
    logits, cache = decode(params, tokens[:, :20], pos, None, cache_len=32)
    steps = [logits]
    for t in range(20, 32):
        logits, cache = decode(params, tokens[:, t:t + 1], jnp.full((2, 1), t), cache)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=2e-4, rtol=1e-4)


def test_kv_cache_generation_equals_full_reruns(model):
    name, m, params = model
    prompts = _prompts()
    kw = dict(max_len=64, max_new_tokens=NEW, batch_size=BATCH, buckets=(64,))  # one compilation per path
    old = generate(Full(m), params, prompts, stop_ids=[-1, -2, -3], **kw)  # stops of the same shape, never met
    assert all(len(o) == NEW for o in old)
    assert generate(ModuleApply(m), params, prompts, stop_ids=[-1, -2, -3], **kw) == old
    # stop tokens that are emitted mid-way by some rows (the 4th token of three prompts)
    stops = [old[i][3] for i in (0, 4, 7)]
    old_stop = generate(Full(m), params, prompts, stop_ids=stops, **kw)
    assert min(len(o) for o in old_stop) <= 4 and max(len(o) for o in old_stop) == NEW
    assert generate(ModuleApply(m), params, prompts, stop_ids=stops, **kw) == old_stop
    if name == "gpt2":  # length buckets: prefill widths 16..64, caches 32 or 64 positions, another batch size
        assert generate(ModuleApply(m), params, prompts, **dict(kw, batch_size=2, buckets=None), stop_ids=stops) \
            == old_stop
        # the decode loop's ends: every row stops at its first token; a single new token (no decode step)
        first = [o[:1] for o in old]
        assert generate(ModuleApply(m), params, prompts, stop_ids=sorted({o[0] for o in old}), **kw) == first
        short = prompts[:8]  # not left-truncated with 12 new tokens either (the 9th has 60 > 64 - 12)
        assert generate(ModuleApply(m), params, short, **dict(kw, max_new_tokens=1), stop_ids=[-1, -2, -3]) \
            == first[:8]


def test_sampling_is_seeded_and_independent_of_batching():
    _, m, params = _build("gpt2")
    prompts = _prompts(3)
    kw = dict(max_len=64, max_new_tokens=NEW, batch_size=BATCH, buckets=(64,))
    a = generate(ModuleApply(m), params, prompts, sampling=Sampling(1.0, 0, seed=7), **kw)
    assert generate(ModuleApply(m), params, prompts, sampling=Sampling(1.0, 0, seed=7), **dict(kw, batch_size=2)) == a
    assert generate(ModuleApply(m), params, prompts[::-1], sampling=Sampling(1.0, 0, seed=7), **kw) != a[::-1]
    assert generate(ModuleApply(m), params, prompts, sampling=Sampling(1.0, 0, seed=8), **kw) != a
    greedy = generate(ModuleApply(m), params, prompts, **kw)
    assert a != greedy
    # top_k = 1 is greedy decoding, whatever the temperature
    assert generate(ModuleApply(m), params, prompts, sampling=Sampling(5.0, 1, seed=7), **kw) == greedy
    with pytest.raises(ValueError, match="temperature"):
        generate(ModuleApply(m), params, prompts, sampling=Sampling(0.0), **kw)


def test_generation_and_scoring_on_meshes():
    """eval_mesh_check.py (4 fake CPU devices): sharded params and batches give the single-device ids."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    here = Path(__file__).resolve().parent
    proc = subprocess.run([sys.executable, str(here / "eval_mesh_check.py")], env=env, cwd=here.parent,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "OK (1,2,2)"
