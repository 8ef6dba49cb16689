"""Cost of distillation: the jitted KD train step against the CE step, and the masked KD step against dense.

    python benchmarks/kd_step.py --preset micro --batch 8 --rounds 7

Four library train steps (`training.step.make_train_step`) on the same model and batch: CE dense, KD
dense, CE masked (50 %), KD masked (50 %); KD = loss "ce+kd" with the teacher's logits computed inside
the step. Each is compiled first (compile time reported separately), then the rounds interleave the four,
each timing `--steps` consecutive steps (wall and process CPU time). RESULT lines give median ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ml_collections import ConfigDict  # noqa: E402

from jaxprune import sparsity  # noqa: E402
from jaxprune.config import default_config  # noqa: E402
from jaxprune.models import Transformer, init_params, model_config_from_preset  # noqa: E402
from jaxprune.training.state import create_state  # noqa: E402
from jaxprune.training.step import make_optimizer, make_train_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args()
    cfg = model_config_from_preset(args.preset)
    model = Transformer(cfg)
    params, _ = init_params(model, jax.random.key(0))
    phase = ConfigDict(default_config().finetune.to_dict())
    tx = make_optimizer(phase)
    masks = sparsity.prune(params, sparsity.create_masks(params, sparsity.DEFAULT_INCLUDE), 0.5)
    batch = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (args.batch, cfg.max_len + 1)), jnp.int32)
    teacher = jax.tree.map(jnp.array, params)
    variants = {}
    for loss in ("ce", "ce+kd"):
        step = jax.jit(make_train_step(model.apply, tx, loss=loss), donate_argnums=0)
        for name, m in (("dense", None), ("masked", masks)):
            variants[f"{loss}/{name}"] = (step, m)
    states, compile_s = {}, {}
    for key, (step, m) in variants.items():
        p = sparsity.apply_masks(params, m) if m is not None else params
        own = None if m is None else jax.tree.map(jnp.array, m)
        state = create_state(jax.tree.map(jnp.array, p), tx, own, seed=0)  # own buffers: the step donates them
        t0 = time.perf_counter()
        state, _ = step(state, batch, teacher) if "kd" in key else step(state, batch)
        jax.block_until_ready(state)
        compile_s[key] = time.perf_counter() - t0
        states[key] = state
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for _ in range(args.rounds):
        for key, (step, _) in variants.items():
            state = states[key]
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                state, _m = step(state, batch, teacher) if "kd" in key else step(state, batch)
            jax.block_until_ready(state)
            wall[key].append((time.perf_counter() - w0) / args.steps)
            cpu[key].append((time.process_time() - c0) / args.steps)
            states[key] = state
    tokens = args.batch * cfg.max_len
    print(f"model {args.preset}, batch {args.batch} x {cfg.max_len} tokens, {args.rounds} interleaved rounds of "
          f"{args.steps} steps; {jax.device_count()} {jax.devices()[0].platform} device(s)")
    for key in variants:
        print(f"{key:14s} step wall min {min(wall[key]) * 1e3:8.1f} ms  median {statistics.median(wall[key]) * 1e3:8.1f} ms"
              f"  cpu median {statistics.median(cpu[key]) * 1e3:8.1f} ms  compile {compile_s[key]:.1f} s  "
              f"{tokens / statistics.median(wall[key]):.0f} tokens/s")
    med = {k: statistics.median(v) for k, v in wall.items()}
    print(f"RESULT kd_over_ce_step_time_dense={med['ce+kd/dense'] / med['ce/dense']:.3f} "
          f"(median wall time per step, KD = ce+kd with the teacher forward in the step)")
    print(f"RESULT masked_over_dense_kd_step_time={med['ce+kd/masked'] / med['ce+kd/dense']:.3f} "
          f"(median wall time per step at 50 % sparsity)")


if __name__ == "__main__":
    main()
