"""Train-step cost of masking: masked step time / dense step time for a ~5M GPT.

Both steps are the same jit-compiled AdamW (+ global-norm clipping) step of a
jaxprune GPT-2-style Transformer; the dense one passes ``masks=None`` (no mask ops
are traced), the masked one 50%-sparse magnitude masks. Rounds alternate dense and
masked timings (and their order) to cancel machine noise; the reported ratio is the
median over rounds of masked/dense wall time of adjacent steps. Process CPU time,
minima and XLA's static cost estimate (flops, bytes) are printed alongside, since on a
shared machine wall-time ratios are noisy.
Last line: ``RESULT masked_over_dense=<ratio>``.

Usage: python benchmarks/mask_overhead.py [--rounds 40] [--steps 1] [--batch 8] [--seq 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
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
    """Runs ``steps`` steps; returns (wall seconds, process CPU seconds, params, opt_state)."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, masks, tokens)
    jax.block_until_ready((params, opt_state, loss))
    return time.perf_counter() - t0, time.process_time() - c0, params, opt_state


def xla_cost(step, *args) -> dict:
    cost = step.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {k: float(cost.get(k, float("nan"))) for k in ("flops", "bytes accessed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--steps", type=int, default=1)
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
    cost = {name: xla_cost(step, p, o, m, tokens) for name, (p, o, m) in state.items()}
    for name, (p, o, m) in state.items():  # compile + warm up
        _, _, state[name][0], state[name][1] = run(step, p, o, m, tokens, 2)

    wall = {"dense": [], "masked": []}
    cpu = {"dense": [], "masked": []}
    for r in range(args.rounds):
        order = ("dense", "masked") if r % 2 == 0 else ("masked", "dense")
        for name in order:
            p, o, m = state[name]
            w, c, state[name][0], state[name][1] = run(step, p, o, m, tokens, args.steps)
            wall[name].append(w / args.steps)
            cpu[name].append(c / args.steps)

    def paired(t):
        return statistics.median(a / b for a, b in zip(t["masked"], t["dense"]))

    print(f"backend={jax.default_backend()} params={n_params:,} batch={args.batch}x{args.seq}")
    for key in cost["dense"]:
        print(f"xla cost {key}: masked/dense = {cost['masked'][key] / cost['dense'][key]:.4f}")
    for label, t in (("wall", wall), ("cpu", cpu)):
        print(
            f"{label:>4} ms/step median dense {statistics.median(t['dense']) * 1e3:.1f} "
            f"masked {statistics.median(t['masked']) * 1e3:.1f}; min dense {min(t['dense']) * 1e3:.1f} "
            f"masked {min(t['masked']) * 1e3:.1f}; median paired ratio {paired(t):.4f}"
        )
    print(f"RESULT masked_over_dense={paired(wall):.4f}")


if __name__ == "__main__":
    main()
