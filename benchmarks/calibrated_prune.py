"""Time of calibrated one-shot pruning (Wanda, SparseGPT) in forward-equivalents.

The library's calibrated path (``jaxprune.models.capture.calibrate_and_prune`` with
``jaxprune.sparsity.layer_pruner``: block-by-block capture of every linear layer's input
statistics, pruning, the pruned block's forward) prunes a model to 50 % (or 2:4 with
``--pattern nm``) from the dense model, compile included (``jax.clear_caches()`` before
every method, so none reuses another's compiled blocks). The unit is one plain jitted
forward pass of the same model over the same calibration tokens, in the same batches
(logits included, compiled beforehand): forward-equivalents = prune seconds / forward
seconds, a ratio that holds across machines. Forward passes are timed before, between and
after the prunings (min and median printed; the median is the unit). ``--warm`` also
times a second, already compiled run of each method, so compile = cold - warm.

Model: a random-init preset (default "micro", GPT-2 style) or SmolLM2-135M from its GGUF
(``--gguf ~/.cache/jaxprune/SmolLM2-135M-Instruct.Q4_1.gguf``). Tokens are random ids (the
time does not depend on them).

Last lines: ``RESULT <method>[_nm]_forward_equivalents=<ratio>`` and
``RESULT <method>[_nm]_prune_s=<seconds>``.

Usage: python benchmarks/calibrated_prune.py [--preset micro | --gguf PATH] [--samples 32 --seq 128]
       [--methods wanda sparsegpt] [--pattern unstructured] [--batch 8] [--warm] [--forward-repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxprune import sparsity
from jaxprune.models import build_model, init_params
from jaxprune.models.capture import calibrate_and_prune
from jaxprune.models.presets import model_config_from_preset


def load(args) -> tuple:
    if args.gguf:
        from jaxprune.models import import_gguf
        params, cfg = import_gguf.load_gguf(args.gguf)
        params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
        return cfg, params
    cfg = model_config_from_preset(args.preset, max_len=args.seq)
    return cfg, jax.tree.map(np.asarray, init_params(build_model(cfg), jax.random.key(0))[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--gguf", default=None, help="a GGUF file (e.g. SmolLM2) instead of a random preset")
    ap.add_argument("--samples", type=int, default=32, help="calibration sequences")
    ap.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    ap.add_argument("--batch", type=int, default=8, help="sequences per calibration forward")
    ap.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    ap.add_argument("--pattern", default="unstructured", choices=["unstructured", "nm"])
    ap.add_argument("--warm", action="store_true", help="also time a second (compiled) run of each method")
    ap.add_argument("--forward-repeats", type=int, default=2, help="forward passes timed before and after each method")
    args = ap.parse_args()

    cfg, params = load(args)
    model = build_model(cfg)
    masks = sparsity.create_masks(params)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (args.samples, args.seq)).astype(np.int32)
    batches = [jnp.asarray(tokens[i:i + args.batch]) for i in range(0, args.samples, args.batch)]
    fwd = jax.jit(lambda p, t: model.apply({"params": p}, t))
    dev_params = jax.device_put(params)
    t0 = time.perf_counter()
    jax.block_until_ready(fwd(dev_params, batches[0]))
    fwd_compile = time.perf_counter() - t0
    forward_s: list[float] = []

    def time_forward() -> None:
        for _ in range(args.forward_repeats):
            t0 = time.perf_counter()
            for b in batches:
                jax.block_until_ready(fwd(dev_params, b))
            forward_s.append(time.perf_counter() - t0)

    n_params = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    print(f"backend={jax.default_backend()} model={'gguf ' + args.gguf if args.gguf else args.preset} "
          f"({cfg.arch}, {n_params:,} params) calibration {args.samples} x {args.seq} tokens, batch {args.batch}, "
          f"pattern {args.pattern}")
    time_forward()
    results = {}
    for method in args.methods:
        layer = sparsity.layer_pruner(method, 0.5, pattern=args.pattern)
        runs = []
        for _ in range(2 if args.warm else 1):
            if not runs:
                jax.clear_caches()
            c0, t0 = time.process_time(), time.perf_counter()
            new_params, new_masks = jax.block_until_ready(
                calibrate_and_prune(cfg, params, masks, tokens, layer, batch_size=args.batch))
            runs.append((time.perf_counter() - t0, time.process_time() - c0))
        kept, total = sparsity.count_masks(new_masks)
        name = method + ("_nm" if args.pattern == "nm" else "")
        results[name] = runs
        warm = f"  warm {runs[1][0]:.1f} s (compile ~{runs[0][0] - runs[1][0]:.1f} s)" if len(runs) > 1 else ""
        print(f"{name:14s} cold {runs[0][0]:8.1f} s wall {runs[0][1]:8.1f} s cpu{warm}  "
              f"sparsity {1 - int(kept) / total:.4f}", flush=True)
        time_forward()
    unit = statistics.median(forward_s)
    print(f"forward over the calibration tokens: compile {fwd_compile:.2f} s, min {min(forward_s):.3f} s, "
          f"median {unit:.3f} s ({len(forward_s)} timings)")
    for name, runs in results.items():
        print(f"RESULT {name}_forward_equivalents={runs[0][0] / unit:.2f}")
        print(f"RESULT {name}_prune_s={runs[0][0]:.2f}")


if __name__ == "__main__":
    main()
