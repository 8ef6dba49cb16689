"""Wall time of the whole LAMBADA test set (5153 passages) through the library's scoring path.

Requests come pre-tokenised from benchmarks/data/lambada_test.npz (see make_lambada.py there),
so no data directory or tokenizer is needed (the GPU machine gets only the checkout). The
model is a randomly initialised jaxprune Transformer of a preset (default GPT-2 124M; the time
does not depend on the weights), scored by ``jaxprune.evaluation.scoring.loglikelihood`` with
``ModuleApply`` exactly as the LAMBADA task does (per-length buckets, batch ``--batch``). The
first pass compiles (timed as such); then ``--rounds`` warm passes, min and median.

Last lines: ``RESULT lambada_full_warm_s=<median warm seconds>`` and
``RESULT lambada_full_examples_per_s=<examples / median warm seconds>``.

Usage: python benchmarks/lambada_full.py [--preset gpt2] [--dtype bfloat16] [--batch 64] [--examples 0 (all)]
       [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from jaxprune.evaluation import harness, scoring
from jaxprune.models import build_model, init_params, model_config_from_preset

DATA = Path(__file__).resolve().parent / "data" / "lambada_test.npz"


def load_requests(vocab_size: int, limit: int = 0) -> list[tuple[list[int], list[int]]]:
    """(context ids, target ids) per passage; ids folded into the model's vocabulary if it is smaller."""
    z = np.load(DATA)
    co, to = z["context_offsets"], z["target_offsets"]
    n = len(co) - 1 if limit <= 0 else min(limit, len(co) - 1)
    ctx = z["context"].astype(np.int64) % vocab_size
    tgt = z["target"].astype(np.int64) % vocab_size
    return [(ctx[co[i]:co[i + 1]].tolist(), tgt[to[i]:to[i + 1]].tolist()) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--examples", type=int, default=0, help="first N passages (0: all 5153)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cfg = model_config_from_preset(args.preset, dtype=args.dtype)
    model = build_model(cfg)
    params = init_params(model, jax.random.key(0))[0]
    requests = load_requests(cfg.vocab_size, args.examples)
    apply_fn = scoring.ModuleApply(model)

    def score():
        return scoring.loglikelihood(apply_fn, params, requests, max_len=cfg.max_len, batch_size=args.batch)

    t0 = time.perf_counter()
    first = score()
    first_s = time.perf_counter() - t0
    warm = []
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        results = score()
        warm.append(time.perf_counter() - t0)
    m = harness.lambada_metrics(results)
    med = statistics.median(warm)
    print(f"backend={jax.default_backend()} devices={len(jax.devices())} model={args.preset} dtype={args.dtype} "
          f"batch={args.batch} passages={len(requests)} tokens={sum(len(c) + len(t) for c, t in requests):,}")
    print(f"first pass (compiles every length bucket): {first_s:.2f} s; warm passes: min {min(warm):.2f} s "
          f"median {med:.2f} s; acc {m['acc']:.4f} ppl {m['ppl']:.1f} (random weights)")
    print(f"RESULT lambada_full_warm_s={med:.3f}")
    print(f"RESULT lambada_full_examples_per_s={len(requests) / med:.1f}")


if __name__ == "__main__":
    main()
