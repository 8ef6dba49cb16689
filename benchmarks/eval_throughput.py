"""Evaluation speed, before and after issue 15, interleaved in one run on this machine.

Model: preset "nano" (4 layers, d_model 192, context 128), randomly initialised, with a
4096-token byte-level BPE trained on the LAMBADA passages (speed does not depend on the
weights). Two measurements, each alternating old and new for --rounds rounds:

* LAMBADA scoring (first --examples passages, zero-shot, batch --batch): examples/s of
  `loglikelihood` on pre-tokenised requests. old = the scorer as it was (LM head and
  log-softmax at every position, `old_loglikelihood` below, verbatim apart from names);
  new = `jaxprune.evaluation.scoring.loglikelihood` (LM head at the scored positions only).
* Generation of 24 tokens (the QA budget) after the first --batch NQ-open questions
  ("Q: ...\\nA:"), no stop tokens, so every row generates all 24: "forward-equivalents" =
  wall time of the generation / wall time of one full-length forward pass of the same
  batch at the generation's buffer width (both measured here). old = full reruns of the
  buffer per token (the path for an apply_fn without `decode`); new = KV cache. Also
  printed: positions the model computes, in units of that forward pass (a count, not a time), and
  the new path split into its prefill (timed alone) and the mean decode step.

Both pairs give identical outputs (checked here, and pinned by tests/test_eval_decode.py).
The first call of each function compiles; compile time is reported separately.

    JAXPRUNE_DATA_DIR=/work/shared/data python benchmarks/eval_throughput.py [--examples 300 --batch 32 --rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune.data.tasks import lambada, nq_open
from jaxprune.data.tokenizer import train_bpe
from jaxprune.evaluation import prompts as P
from jaxprune.evaluation import scoring
from jaxprune.evaluation.scoring import Loglikelihood, ModuleApply, generate, loglikelihood
from jaxprune.models import build_model, init_params, model_config_from_preset

NEW_TOKENS = 24


@dataclasses.dataclass(frozen=True)
class FullLogits:
    """The model as a bare apply_fn (no select, no decode): the paths taken before issue 15."""

    module: Any

    def __call__(self, params, tokens):
        return self.module.apply({"params": params}, tokens)


# -- the loglikelihood scorer before issue 15 (baseline) ---------------------------------
@functools.partial(jax.jit, static_argnums=0)
def _old_score_batch(apply_fn, params, inputs, targets, mask):
    logits = apply_fn(params, inputs).astype(jnp.float32)  # (B, T, V)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(logits, axis=-1) == targets
    m = mask.astype(bool)
    return (jnp.sum(jnp.where(m, tok, 0.0), axis=-1), jnp.all(greedy | ~m, axis=-1),
            jnp.sum(m, axis=-1).astype(jnp.int32))


def old_loglikelihood(apply_fn, params, requests, *, max_len: int, batch_size: int) -> list[Loglikelihood]:
    buckets = scoring.length_buckets(max_len)
    rows = [scoring._truncate(c, t, max_len) for c, t in requests]
    pending = []
    for width, idx in scoring._batches([len(f) - 1 for f, _ in rows], buckets, batch_size):
        inputs = np.zeros((batch_size, width), np.int32)
        targets = np.zeros((batch_size, width), np.int32)
        mask = np.zeros((batch_size, width), np.bool_)
        for r, i in enumerate(idx):
            full, n = rows[i]
            t = len(full) - 1
            inputs[r, :t], targets[r, :t] = full[:-1], full[1:]
            mask[r, t - n:t] = True
        pending.append((idx, _old_score_batch(apply_fn, params, inputs, targets, mask)))
    out: list[Any] = [None] * len(requests)
    for idx, result in pending:
        lp, greedy, n = (np.asarray(x) for x in result)
        for r, i in enumerate(idx):
            out[i] = Loglikelihood(float(lp[r]), bool(greedy[r]), int(n[r]))
    return out


# -- benchmark -------------------------------------------------------------------------
def _timed(fn) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    data_dir = Path(os.environ.get("JAXPRUNE_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
    texts = [json.loads(line)["text"] for line in (data_dir / lambada.FILE).read_text().splitlines()]
    tok = train_bpe(texts, 4096)
    model = build_model(model_config_from_preset(args.preset, vocab_size=4096))
    max_len = model.cfg.max_len
    params = jax.jit(lambda k: init_params(model, k)[0])(jax.random.key(0))
    enc = lambda s: tok.encode(s, add_special_tokens=False).ids  # noqa: E731
    lam = lambada.load(data_dir).examples[:args.examples]
    requests = [(enc(P.query("lambada", ex)), enc(P.targets("lambada", ex)[0])) for ex in lam]
    questions = [enc(P.query("qa", ex)) for ex in nq_open.load(data_dir).examples[:args.batch]]
    print(f"model: {args.preset} random init, vocab 4096 BPE on LAMBADA; device: {jax.devices()[0].platform} "
          f"x{jax.device_count()}; {len(requests)} LAMBADA examples, batch {args.batch}; "
          f"{len(questions)} NQ-open prompts x {NEW_TOKENS} new tokens", flush=True)

    old_fn, new_fn = FullLogits(model), ModuleApply(model)
    ll = {"old": lambda: old_loglikelihood(old_fn, params, requests, max_len=max_len, batch_size=args.batch),
          "new": lambda: loglikelihood(new_fn, params, requests, max_len=max_len, batch_size=args.batch)}
    gen_kw = dict(max_len=max_len, max_new_tokens=NEW_TOKENS, batch_size=args.batch, stop_ids=[])
    gen = {"old": lambda: generate(old_fn, params, questions, **gen_kw),
           "new": lambda: generate(new_fn, params, questions, **gen_kw)}
    # one full-length forward pass of the generation's batch at its buffer width (the unit)
    width = scoring._bucket(max(len(q) for q in questions) + NEW_TOKENS, scoring.length_buckets(max_len))
    prompt_width = scoring._bucket(max(len(q) for q in questions), scoring.length_buckets(max_len))
    buf = jnp.zeros((args.batch, width), jnp.int32)
    fwd = jax.jit(model.apply)
    # the KV-cache generation's prefill alone (prompts at their bucket, LM head at one position per row)
    pbuf = jnp.zeros((args.batch, prompt_width), jnp.int32)
    ppos = jnp.broadcast_to(jnp.arange(prompt_width), pbuf.shape)
    prefill = jax.jit(lambda p: new_fn.decode(p, pbuf, ppos, None, cache_len=width,
                                              select=jnp.zeros((args.batch, 1), jnp.int32))[0])
    unit = {"forward": lambda: fwd({"params": params}, buf), "prefill": lambda: prefill(params)}

    compile_s, outs = {}, {}
    for name, fns in (("loglikelihood", ll), ("generate", gen), ("forward", unit)):
        for k, fn in fns.items():
            compile_s[f"{name}/{k}"], outs[f"{name}/{k}"] = _timed(fn)
    a, b = outs["loglikelihood/old"], outs["loglikelihood/new"]
    ll_diff = max(abs(x.logprob - y.logprob) for x, y in zip(a, b))
    assert all((x.is_greedy, x.num_tokens) == (y.is_greedy, y.num_tokens) for x, y in zip(a, b)) and ll_diff < 1e-3
    assert outs["generate/old"] == outs["generate/new"], "KV-cache generation differs from full reruns"
    assert all(len(o) == NEW_TOKENS for o in outs["generate/new"])
    print("first calls (with compilation): " + ", ".join(f"{k} {v:.2f} s" for k, v in compile_s.items()))
    print(f"outputs identical: loglikelihoods within {ll_diff:.1e} with the same greedy flags, generated ids equal")

    times: dict[str, list[float]] = {k: [] for k in ("ll/old", "ll/new", "gen/old", "gen/new", "forward", "prefill")}
    for rnd in range(args.rounds):
        for k in ("old", "new"):
            times[f"ll/{k}"].append(_timed(ll[k])[0])
            times[f"gen/{k}"].append(_timed(gen[k])[0])
        times["forward"].append(_timed(unit["forward"])[0])
        times["prefill"].append(_timed(unit["prefill"])[0])
        print(f"round {rnd + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items()),
              flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    mins = {k: min(v) for k, v in times.items()}
    n = len(requests)
    print(f"\nmedians (min) of {args.rounds} interleaved rounds")
    for k in ("old", "new"):
        print(f"LAMBADA {k}: {med[f'll/{k}']:.3f} s ({mins[f'll/{k}']:.3f}) = {n / med[f'll/{k}']:.1f} examples/s")
    for k in ("old", "new"):
        print(f"generate {k}: {med[f'gen/{k}'] * 1e3:.1f} ms ({mins[f'gen/{k}'] * 1e3:.1f}) = "
              f"{med[f'gen/{k}'] / med['forward']:.2f} forward-equivalents "
              f"(one forward {args.batch}x{width}: {med['forward'] * 1e3:.1f} ms)")
    step = (med["gen/new"] - med["prefill"]) / (NEW_TOKENS - 1)
    print(f"KV-cache generation = prefill {med['prefill'] * 1e3:.1f} ms ({med['prefill'] / med['forward']:.2f} "
          f"forward-equivalents) + {NEW_TOKENS - 1} decode steps of {step * 1e3:.2f} ms (medians; one position's "
          f"share of the forward pass: {med['forward'] / width * 1e3:.2f} ms)")
    counted_new = (prompt_width + NEW_TOKENS - 1) / width  # prefill at the prompts' bucket, then one per token
    print(f"positions computed per {NEW_TOKENS} tokens, in forward passes of width {width}: old {NEW_TOKENS}, "
          f"new {counted_new:.2f} (prefill {prompt_width} + {NEW_TOKENS - 1} single positions)")
    print(f"RESULT lambada_examples_per_s_old={n / med['ll/old']:.1f}")
    print(f"RESULT lambada_examples_per_s_new={n / med['ll/new']:.1f}")
    print(f"RESULT lambada_speedup={med['ll/old'] / med['ll/new']:.2f}")
    print(f"RESULT generation_forward_equivalents_per_{NEW_TOKENS}_tokens_old={med['gen/old'] / med['forward']:.2f}")
    print(f"RESULT generation_forward_equivalents_per_{NEW_TOKENS}_tokens_new={med['gen/new'] / med['forward']:.2f}")
    print(f"RESULT generation_decode_step_ms={step * 1e3:.2f}")
    print(f"RESULT generation_decode_step_over_forward_position_share={step / (med['forward'] / width):.2f}")


if __name__ == "__main__":
    main()
