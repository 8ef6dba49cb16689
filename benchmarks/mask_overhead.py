"""Train-step cost of masking: masked / dense time of the library's train step on a ~5M GPT.

Both are ``jaxprune.training.step.make_train_step`` with ``make_optimizer`` (AdamW, global-norm
clipping, mask-aware updates) on a jaxprune Transformer (preset "micro", vocab 2048), compiled
once each (timed apart); the dense state has no masks (no mask ops are traced), the masked one
50 %-sparse global magnitude masks. Rounds alternate dense and masked blocks of ``--steps``
consecutive steps (order flipped every round, so both see the same machine load); each block is
timed in wall and process CPU time and divided by its steps. Printed: min and median per step of
both, the ratio of the medians and the median of the per-round ratios, and XLA's static cost
estimate (flops, bytes) of both steps.

Last line: ``RESULT masked_over_dense=<median masked / median dense wall time per step>``.

Usage: python benchmarks/mask_overhead.py [--rounds 12] [--steps 5] [--batch 8] [--seq 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import ml_collections
import numpy as np

from jaxprune import sparsity
from jaxprune.config import default_config
from jaxprune.models import build_model, init_params
from jaxprune.models.presets import model_config_from_preset
from jaxprune.training.state import create_state
from jaxprune.training.step import make_optimizer, make_train_step


def xla_cost(compiled) -> dict:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {k: float(cost.get(k, float("nan"))) for k in ("flops", "bytes accessed")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=64)
    args = parser.parse_args()

    cfg = default_config()
    phase = ml_collections.ConfigDict(cfg.finetune.to_dict())
    phase.steps, phase.warmup_steps = 10_000, 0
    tx = make_optimizer(phase)
    mcfg = model_config_from_preset("micro", vocab_size=2048, max_len=args.seq)
    model = build_model(mcfg)
    params = init_params(model, jax.random.key(0))[0]
    n_params = sum(x.size for x in jax.tree.leaves(params))
    masks = sparsity.prune(params, sparsity.create_masks(params), 0.5)
    step = make_train_step(model.apply, tx)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, mcfg.vocab_size, (args.batch, args.seq + 1)).astype(np.int32)
               for _ in range(args.steps)]

    states = {"dense": create_state(params, tx, None, 0),
              "masked": create_state(sparsity.apply_masks(params, masks), tx, masks, 0)}
    fns, cost, compile_s = {}, {}, {}
    for name in states:
        t0 = time.perf_counter()
        fns[name] = jax.jit(step).lower(states[name], batches[0]).compile()  # no donation: states share leaves
        compile_s[name] = time.perf_counter() - t0
        cost[name] = xla_cost(fns[name])
        for b in batches:  # warm up
            states[name], metrics = fns[name](states[name], b)
        jax.block_until_ready(metrics)

    wall = {"dense": [], "masked": []}
    cpu = {"dense": [], "masked": []}
    for r in range(args.rounds):
        for name in (("dense", "masked") if r % 2 == 0 else ("masked", "dense")):
            t0, c0 = time.perf_counter(), time.process_time()
            for b in batches:
                states[name], metrics = fns[name](states[name], b)
            jax.block_until_ready((states[name].params, metrics))
            wall[name].append((time.perf_counter() - t0) / args.steps)
            cpu[name].append((time.process_time() - c0) / args.steps)

    print(f"backend={jax.default_backend()} params={n_params:,} batch={args.batch}x{args.seq} "
          f"rounds={args.rounds} x {args.steps} steps; compile dense {compile_s['dense']:.1f} s "
          f"masked {compile_s['masked']:.1f} s")
    for key in cost["dense"]:
        print(f"xla cost {key}: masked/dense = {cost['masked'][key] / cost['dense'][key]:.4f}")
    ratio = {}
    for label, t in (("wall", wall), ("cpu", cpu)):
        ratio[label] = statistics.median(t["masked"]) / statistics.median(t["dense"])
        paired = statistics.median(a / b for a, b in zip(t["masked"], t["dense"]))
        print(f"{label:>4} ms/step dense min {min(t['dense']) * 1e3:.1f} median {statistics.median(t['dense']) * 1e3:.1f}"
              f" | masked min {min(t['masked']) * 1e3:.1f} median {statistics.median(t['masked']) * 1e3:.1f}"
              f" | ratio of medians {ratio[label]:.4f}, median per-round ratio {paired:.4f}")
    print(f"RESULT masked_over_dense_cpu={ratio['cpu']:.4f}")
    print(f"RESULT masked_over_dense={ratio['wall']:.4f}")


if __name__ == "__main__":
    main()
