"""Cost of the fine-tuning step: KD against CE, masked against dense, chunked LM-head loss and bf16 against
the float32 step that materialises all logits.

    python benchmarks/kd_step.py --preset micro --batch 8 --rounds 7
    python benchmarks/kd_step.py --preset smollm2-135m --seq 256 --batch 8 --rounds 3 --steps 1 --loss_chunk 32 --bf16

Library train steps (`training.step.make_train_step`) on the same model and batch: CE dense, KD dense,
CE masked (50 %), KD masked (50 %); KD = loss "ce+kd" with the teacher's logits computed inside the step.
--loss_chunk N adds CE and KD dense with the LM head run N positions at a time (`chunked_token_losses`);
--bf16 adds the chunked CE step with bfloat16 compute (float32 params); --hidden adds KD dense with
intermediate-layer distillation on every block's output (`finetune.kd_hidden_layers`). Each is compiled first (compile
time reported separately), then the rounds interleave all of them, each timing `--steps` consecutive steps
(wall and process CPU time). RESULT lines give median ratios and tokens/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
from jaxprune.models.transformer import head_logits  # noqa: E402
from jaxprune.training.state import create_state  # noqa: E402
from jaxprune.training.step import make_optimizer, make_train_step  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq", type=int, default=0, help="context length (0: the preset's)")
    ap.add_argument("--layers", type=int, default=0, help="blocks (0: the preset's)")
    ap.add_argument("--loss_chunk", type=int, default=0, help="also time the chunked-loss steps")
    ap.add_argument("--bf16", action="store_true", help="also time the chunked CE step in bfloat16")
    ap.add_argument("--hidden", action="store_true", help="also time KD with every block's output matched")
    args = ap.parse_args()
    cfg = model_config_from_preset(args.preset)
    if args.seq:
        cfg = dataclasses.replace(cfg, max_len=args.seq)
    if args.layers:
        cfg = dataclasses.replace(cfg, n_layer=args.layers)
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
    if args.hidden:
        step = jax.jit(make_train_step(model.apply, tx, loss="ce+kd", hidden_layers=tuple(range(cfg.n_layer))),
                       donate_argnums=0)
        variants["ce+kd/dense/hidden"] = (step, None)
    chunked = [("ce", cfg), ("ce+kd", cfg)] + [("ce", dataclasses.replace(cfg, dtype="bfloat16"))] * args.bf16
    for loss, c in chunked if args.loss_chunk else ():
        step = jax.jit(make_train_step(Transformer(c).apply, tx, loss=loss, loss_chunk=args.loss_chunk,
                                       head=functools.partial(head_logits, c)), donate_argnums=0)
        variants[f"{loss}/dense/chunk{args.loss_chunk}" + ("/bf16" if c.dtype == "bfloat16" else "")] = (step, None)
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
    print(f"model {args.preset} ({cfg.n_layer} blocks, vocabulary {cfg.vocab_size}), batch {args.batch} x {cfg.max_len} tokens, {args.rounds} interleaved rounds of "
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
    if args.hidden:
        print(f"RESULT hidden_kd_over_kd_step_time={med['ce+kd/dense/hidden'] / med['ce+kd/dense']:.3f} "
              f"(median wall time per step, dense; every block's output matched to the teacher's)")
    for key in med:
        if "chunk" in key:
            base = key.split("/")[0] + "/dense"
            print(f"RESULT {key.replace('/', '_')}_over_{base.replace('/', '_')}_step_time="
                  f"{med[key] / med[base]:.3f} (median wall time per step; tokens/s "
                  f"{tokens / med[base]:.0f} -> {tokens / med[key]:.0f})")


if __name__ == "__main__":
    main()
