"""Train-step cost of masking: masked step time / dense step time for a ~5M GPT.

Both steps are the same jit-compiled AdamW (+ global-norm clipping) step of a
jaxprune GPT-2-style Transformer; the dense one passes ``masks=None`` (no mask ops
are traced), the masked one 50%-sparse magnitude masks. Rounds alternate dense and
masked timings (and their order) to cancel machine noise; the ratio is the median of
the per-round ratios. Last line: ``RESULT masked_over_dense=<ratio>``.

Usage: python benchmarks/mask_overhead.py [--rounds 10] [--steps 5] [--batch 8] [--seq 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from jaxprune.models.presets import model_config_from_preset
from jaxprune.models.transformer import Transformer, init_params
from jaxprune.sparsity import apply_masks, create_masks, masked_update, prune


def make_step(model: Transformer, tx: optax.GradientTransformationExtraArgs):
    def loss_fn(params, tokens):
        logits = model.apply({"params": params}, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    @jax.jit
    def step(params, opt_state, masks, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        updates, opt_state = tx.update(grads, opt_state, params, masks=masks)
        params = apply_masks(optax.apply_updates(params, updates), masks)
        return params, opt_state, loss

    return step


def run(step, params, opt_state, masks, tokens, steps: int):
    t0 = time.perf_counter()
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, masks, tokens)
    jax.block_until_ready((params, opt_state, loss))
    return time.perf_counter() - t0, params, opt_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    args = parser.parse_args()

    cfg = model_config_from_preset("micro", vocab_size=2048, max_len=args.seq)
    model = Transformer(cfg)
    params, _ = init_params(model, jax.random.key(0))
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    masks = prune(params, create_masks(params), 0.5)
    tx = masked_update(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-4, weight_decay=0.1)))
    step = make_step(model, tx)
    tokens = jax.random.randint(jax.random.key(1), (args.batch, args.seq + 1), 0, cfg.vocab_size)

    state = {
        "dense": [params, tx.init(params), None],
        "masked": [apply_masks(params, masks), tx.init(params), masks],
    }
    for name, (p, o, m) in state.items():  # compile + warm up
        _, state[name][0], state[name][1] = run(step, p, o, m, tokens, 2)

    ratios, times = [], {"dense": [], "masked": []}
    for r in range(args.rounds):
        order = ("dense", "masked") if r % 2 == 0 else ("masked", "dense")
        for name in order:
            p, o, m = state[name]
            t, state[name][0], state[name][1] = run(step, p, o, m, tokens, args.steps)
            times[name].append(t / args.steps)
        ratios.append(times["masked"][-1] / times["dense"][-1])

    print(f"backend={jax.default_backend()} params={n_params:,} batch={args.batch}x{args.seq}")
    print(
        f"dense {statistics.median(times['dense']) * 1e3:.1f} ms/step, "
        f"masked {statistics.median(times['masked']) * 1e3:.1f} ms/step (medians over {args.rounds} rounds)"
    )
    print("per-round ratios: " + " ".join(f"{x:.3f}" for x in ratios))
    print(f"RESULT masked_over_dense={statistics.median(ratios):.4f}")


if __name__ == "__main__":
    main()
