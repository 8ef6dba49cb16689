"""One-shot global magnitude pruning of SmolLM2-135M-Instruct (no fine-tuning), LAMBADA after each rate.

    python scripts/fetch_smollm2.py
    python experiments/smollm2/prune_oneshot.py --n 500 --rates 0.1 0.3 0.5

Prunable weights: every attention and MLP kernel (jaxprune.sparsity's default include
pattern `.*/(attn|mlp)/.*/kernel$`); embeddings (tied with the output head) and norms
are kept. Each rate prunes the dense model afresh with one global magnitude threshold
(`sparsity.prune(..., scores="magnitude", scope="global")`, exact counts from `prune_counts`).
LAMBADA as in parity_lambada.py (first N examples, jaxprune's GGUF tokenizer).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from parity_lambada import encode_examples, jax_scorer, lambada_examples, lambada_metrics, load_jaxprune  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3, 0.5])
    ap.add_argument("--dense", action="store_true", help="also evaluate rate 0")
    ap.add_argument("--gguf", default="")
    ap.add_argument("--json", default="")
    args = ap.parse_args()

    import jax

    from jaxprune import sparsity
    from jaxprune.models.fetch import fetch

    path = Path(args.gguf) if args.gguf else fetch("smollm2")
    cfg, params, tok = load_jaxprune(path)
    encoded = encode_examples(lambda s: tok.encode(s).ids, lambada_examples(args.n))
    masks0 = sparsity.create_masks(params)
    # Exact counts on the host (a traced float rate can be off by one entry), selection jitted once.
    prune = jax.jit(lambda p, m, k: sparsity.prune(p, m, scores="magnitude", scope="global", counts=k))
    rows = []
    for rate in ([0.0] if args.dense else []) + list(args.rates):
        t0 = time.time()
        masks = prune(params, masks0, sparsity.prune_counts(params, masks0, rate, scope="global")) \
            if rate > 0 else masks0
        pruned = sparsity.apply_masks(params, masks)
        score, _ = jax_scorer(cfg, pruned)
        m = lambada_metrics(score, encoded, args.batch)
        row = {"rate": rate, "sparsity": round(sparsity.overall_sparsity(masks), 6), **m,
               "seconds": round(time.time() - t0, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
