"""Measured speed of structurally pruned, compacted GPT models against their FLOP ratio.

A GPT-2-style model (default d_model 1024, 4 layers, 16 heads, d_ff 4096, vocab 8192,
random weights with non-zero biases) is pruned at 25, 50 and 75 % structured sparsity:
that fraction of the MLP neurons AND of the attention heads of every block (lowest L1
weight norm), then compacted into a smaller dense model (jaxprune.models.compact),
whose logits are checked against the masked model. Timed, all under jit on this
machine's default backend:

* prefill: one forward pass over a batch of 4 x 512 tokens (logits included);
* decode: greedy generation of 32 tokens, token by token, for a batch of 4 after a
  512-token prompt, with the library's KV cache (the Transformer's decode path, as
  `jaxprune.evaluation.scoring.generate` uses it), checked against the model's full
  forward logits; the prompt's prefill is not timed.

Rounds are interleaved (dense, 25 %, 50 %, 75 %, dense, ...) and each number is the
median over rounds. FLOPs are the matmul FLOPs actually executed (2 per multiply-add:
projections, the lm head, and full T x T attention scores and mixing, which XLA
computes unmasked); speedup / FLOP ratio = 1 means the compacted model runs as fast
as its FLOPs allow.

    python benchmarks/structured_speedup.py [--d_model 1024 --n_layer 4 --rounds 5]

Last line: ``RESULT speedup_over_flop_ratio_at_50=<prefill speedup / FLOP ratio at 50 %>``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import jax
import jax.numpy as jnp

from jaxprune import sparsity
from jaxprune.evaluation.scoring import ModuleApply
from jaxprune.models import build_model, init_params, param_count
from jaxprune.models.compact import compact_model, prune_structured
from jaxprune.models.presets import ModelConfig


# -- FLOPs ---------------------------------------------------------------------------
def forward_flops(cfg: ModelConfig, batch: int, q_len: int, kv_len: int) -> float:
    """Matmul FLOPs of q_len new tokens per sequence attending to kv_len positions."""
    e, d, total = cfg.d_model, cfg.head_dim, 0.0
    for i in range(cfg.n_layer):
        a, f = cfg.heads_of(i) * d, cfg.ff_of(i)
        total += 2 * batch * q_len * (4 * e * a + 2 * e * f)  # c_attn (3EA), c_proj (AE), c_fc, mlp c_proj
        total += 4 * batch * q_len * kv_len * a  # scores q.k and mixing p.v
    return total + 2 * batch * q_len * e * cfg.vocab_size  # tied lm head


# -- KV-cache decoding: the library's (Transformer decode path via ModuleApply.decode) ------------
def make_decoder(cfg: ModelConfig, t_max: int):
    """(prefill(params, prompt) -> (cache, next_tok), decode(params, cache, tok, pos, steps) -> (toks, logits))."""
    apply = ModuleApply(build_model(cfg))

    @jax.jit
    def prefill(params, prompt):
        b, p = prompt.shape
        logits, cache = apply.decode(params, prompt, jnp.broadcast_to(jnp.arange(p), (b, p)), None,
                                     cache_len=t_max, select=jnp.full((b, 1), p - 1))
        return cache, jnp.argmax(logits[:, 0], -1)

    @partial(jax.jit, static_argnums=(4,))
    def decode(params, cache, tok, pos, steps):
        def body(carry, _):
            cache, tok, pos = carry
            logits, cache = apply.decode(params, tok[:, None], jnp.full((tok.shape[0], 1), pos), cache)
            return (cache, jnp.argmax(logits[:, 0], -1), pos + 1), (tok, logits[:, 0])
        _, (toks, logits) = jax.lax.scan(body, (cache, tok, pos), None, length=steps)
        return toks.T, jnp.moveaxis(logits, 0, 1)  # (B, steps), (B, steps, V)

    return prefill, decode


# -- benchmark -------------------------------------------------------------------------
def _time(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d_model", type=int, default=1024)
    ap.add_argument("--n_layer", type=int, default=4)
    ap.add_argument("--n_head", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prefill_len", type=int, default=512)
    ap.add_argument("--decode_steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rates", default="0.25,0.5,0.75")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    t_max = args.prefill_len + args.decode_steps
    cfg = ModelConfig(vocab_size=args.vocab, max_len=t_max, n_layer=args.n_layer, d_model=args.d_model,
                      n_head=args.n_head, d_ff=4 * args.d_model)
    print(f"backend {jax.default_backend()} ({jax.device_count()} device(s)); model {cfg.n_layer} layers, "
          f"d_model {cfg.d_model}, {cfg.n_head} heads, d_ff {cfg.d_ff}, vocab {cfg.vocab_size}", flush=True)
    params = jax.jit(lambda k: init_params(build_model(cfg), k)[0])(jax.random.key(0))
    keys = iter(jax.random.split(jax.random.key(1), 1000))
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(next(keys), x.shape) if x.ndim == 1 else x, params)

    models = {"dense": (cfg, params)}
    check = jax.random.randint(jax.random.key(2), (1, 64), 0, cfg.vocab_size)
    for r in rates:
        masks = prune_structured(cfg, params, sparsity.create_masks(params), r)
        c, p = compact_model(cfg, params, masks)
        want = build_model(cfg).apply({"params": sparsity.apply_masks(params, masks)}, check)
        got = build_model(c).apply({"params": p}, check)
        err = float(jnp.max(jnp.abs(got - want)))
        assert err < 1e-3, f"compacted model at {r} differs from the masked one by {err}"
        models[f"{int(r * 100)}%"] = (c, p)
        print(f"{int(r * 100)}%: d_ff {c.layer_d_ff}, heads {c.layer_n_head}, max |logit diff| vs masked {err:.2e}",
              flush=True)

    prompt = jax.random.randint(jax.random.key(3), (args.batch, args.prefill_len), 0, cfg.vocab_size)
    fns = {}
    for name, (c, p) in models.items():
        fwd = jax.jit(build_model(c).apply)
        prefill, decode = make_decoder(c, t_max)
        caches, tok = prefill(p, prompt)
        # the KV-cache decoder agrees with the Flax model on the prompt's continuation
        toks, logits = decode(p, caches, tok, args.prefill_len, args.decode_steps)
        full = fwd({"params": p}, jnp.concatenate([prompt, toks[:, :-1]], 1)[:2])[:, args.prefill_len - 1:]
        err = float(jnp.max(jnp.abs(full[:, 1:] - logits[:2, :-1]))) if args.decode_steps > 1 else 0.0
        assert err < 2e-3, f"{name}: KV-cache decode differs from the model by {err}"
        jax.block_until_ready(fwd({"params": p}, prompt))  # compile
        fns[name] = (partial(fwd, {"params": p}, prompt),
                     partial(decode, p, caches, tok, args.prefill_len, args.decode_steps))
    times = {n: ([], []) for n in models}
    for rnd in range(args.rounds):
        for name, (pf, dc) in fns.items():
            times[name][0].append(_time(pf))
            times[name][1].append(_time(dc))
        print(f"round {rnd + 1}/{args.rounds}: " + ", ".join(
            f"{n} {t[0][-1] * 1e3:.0f}/{t[1][-1] * 1e3:.0f} ms" for n, t in times.items()), flush=True)

    dense_pf = statistics.median(times["dense"][0])
    dense_dc = statistics.median(times["dense"][1])
    f_pf0 = forward_flops(cfg, args.batch, args.prefill_len, args.prefill_len)
    f_dc0 = forward_flops(cfg, args.batch, 1, t_max)
    print(f"\nprefill {args.batch}x{args.prefill_len} tokens; decode {args.decode_steps} tokens x batch "
          f"{args.batch} with KV cache ({t_max} slots); medians of {args.rounds} interleaved rounds")
    print(f"{'model':>6} {'params':>11} {'prefill ms':>10} {'speedup':>7} {'FLOP ratio':>10} {'sp/FLOP':>7} "
          f"{'decode ms/tok':>13} {'speedup':>7} {'FLOP ratio':>10} {'sp/FLOP':>7}")
    ratio50 = dec50 = None
    for name, (c, _) in models.items():
        pf, dc = statistics.median(times[name][0]), statistics.median(times[name][1])
        fr_pf = f_pf0 / forward_flops(c, args.batch, args.prefill_len, args.prefill_len)
        fr_dc = f_dc0 / forward_flops(c, args.batch, 1, t_max)
        sp_pf, sp_dc = dense_pf / pf, dense_dc / dc
        print(f"{name:>6} {param_count(c):>11,} {pf * 1e3:>10.1f} {sp_pf:>7.2f} {fr_pf:>10.2f} {sp_pf / fr_pf:>7.2f} "
              f"{dc * 1e3 / args.decode_steps:>13.2f} {sp_dc:>7.2f} {fr_dc:>10.2f} {sp_dc / fr_dc:>7.2f}")
        if name == "50%":
            ratio50 = sp_pf / fr_pf
            dec50 = sp_dc / fr_dc
    if ratio50 is not None:
        print(f"RESULT decode_speedup_over_flop_ratio_at_50={dec50:.3f}")
        print(f"RESULT speedup_over_flop_ratio_at_50={ratio50:.3f}")


if __name__ == "__main__":
    main()
