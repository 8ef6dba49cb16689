"""Magnitude vs Wanda vs SparseGPT on SmolLM2-135M-Instruct, one-shot, no fine-tuning.

    python scripts/fetch_smollm2.py
    JAXPRUNE_DATA_DIR=/work/shared/data python experiments/calibration/compare.py \\
        --calib 32 --calib-len 512 --windows 16 --lambada 200 --out experiments/calibration/results.jsonl

Prunable weights: every attention and MLP kernel of the 30 blocks (jaxprune's default include);
embeddings (tied head) and norms are kept. Each configuration prunes the dense model afresh:

* magnitude: layer-wise |w| (`sparsity.prune(..., scope="layerwise")`, or N:M along the input axis);
* wanda: |w| * ||X_j||, per output (floor(rate * in) per output) or per N:M group (Sun et al. 2023);
* sparsegpt: OBS reconstruction, adaptive mask per 128-input block, damp 0.01 (Frantar & Alistarh 2023).

Wanda and SparseGPT calibrate sequentially (`jaxprune.models.capture.calibrate_and_prune`): block i's
linear inputs are captured with blocks 0..i-1 already pruned. Calibration data: `--calib` random
windows of `--calib-len` tokens from the books *train* split (the project's training corpus).
Evaluation: perplexity on the first `--windows` non-overlapping 512-token windows of WikiText-2 test
(raw text of wikitext-2/test.txt) and of the books test split (concatenated in splits.json order),
and LAMBADA (OpenAI) accuracy on the first `--lambada` examples, as in experiments/smollm2.
Each finished configuration appends one JSON line to `--out` (a rerun skips those done).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments" / "smollm2"))

from parity_lambada import encode_examples, jax_scorer, lambada_examples, lambada_metrics, load_jaxprune  # noqa: E402


def windows(ids: np.ndarray, length: int, count: int) -> np.ndarray:
    """The first `count` non-overlapping windows of `length + 1` tokens (inputs + next-token targets)."""
    n = min(count, (len(ids) - 1) // length)
    return np.stack([ids[i * length: i * length + length + 1] for i in range(n)]).astype(np.int32)


def make_ppl(cfg, batch: int):
    import jax
    import jax.numpy as jnp

    from jaxprune.models import build_model

    model = build_model(cfg)

    @jax.jit
    def nll(params, w):
        logits = model.apply({"params": params}, w[:, :-1])
        lp = jax.nn.log_softmax(logits, -1)
        return -jnp.sum(jnp.take_along_axis(lp, w[:, 1:, None], -1))

    def ppl(params, wins: np.ndarray) -> float:
        total = sum(float(nll(params, wins[i: i + batch])) for i in range(0, len(wins), batch))
        return float(np.exp(total / (wins.shape[0] * (wins.shape[1] - 1))))

    return ppl


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calib", type=int, default=32, help="calibration sequences")
    ap.add_argument("--calib-len", type=int, default=512)
    ap.add_argument("--calib-batch", type=int, default=4, help="sequences per calibration forward")
    ap.add_argument("--windows", type=int, default=16, help="512-token windows per perplexity set")
    ap.add_argument("--lambada", type=int, default=200)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rate", type=float, default=0.5)
    ap.add_argument("--configs", nargs="+",
                    default=["dense", "sparsegpt:unstructured", "wanda:unstructured", "magnitude:unstructured",
                             "sparsegpt:nm", "wanda:nm", "magnitude:nm"])
    ap.add_argument("--gguf", default="")
    ap.add_argument("--out", default=str(ROOT / "experiments" / "calibration" / "results.jsonl"))
    args = ap.parse_args()

    import jax

    from jaxprune import sparsity
    from jaxprune.config import DATA_DIR_ENV
    from jaxprune.data import corpus
    from jaxprune.models.capture import calibrate_and_prune
    from jaxprune.models.fetch import fetch

    data = Path(os.environ.get(DATA_DIR_ENV, str(ROOT.parent / "shared" / "data")))
    cfg, dense, tok = load_jaxprune(Path(args.gguf) if args.gguf else fetch("smollm2"))
    enc = lambda s: np.asarray(tok.encode(s).ids, np.int32)  # noqa: E731
    wiki = windows(enc(corpus.read_text(data / "wikitext-2" / "test.txt")), 512, args.windows)
    books_text = "\n\n".join(corpus.load_texts("books", "test", data))
    books = windows(enc(books_text[: 4_000 * args.windows]), 512, args.windows)
    train = enc("\n\n".join(corpus.load_texts("books", "train", data, max_bytes=40_000 * args.calib)))
    starts = np.random.default_rng(0).choice(len(train) - args.calib_len, args.calib, replace=False)
    calib = np.stack([train[s: s + args.calib_len] for s in np.sort(starts)])
    lam = encode_examples(lambda s: tok.encode(s).ids, lambada_examples(args.lambada))
    ppl = make_ppl(cfg, args.batch)

    out = Path(args.out)
    done = {json.loads(line)["config"] for line in out.read_text().splitlines() if line.strip()} \
        if out.is_file() else set()
    masks0 = sparsity.create_masks(dense)
    for name in args.configs:
        if name in done:
            continue
        method, _, pattern = name.partition(":")
        t0 = time.time()
        if method == "dense":
            params, masks = dense, masks0
        elif method == "magnitude":
            fn = jax.jit(lambda p, m: sparsity.prune(p, m, args.rate, scores="magnitude", scope="layerwise",
                                                     pattern=pattern))
            masks = jax.block_until_ready(fn(dense, masks0))
            params = sparsity.apply_masks(dense, masks)
        else:
            layer = sparsity.layer_pruner(method, args.rate, pattern=pattern)
            params, masks = calibrate_and_prune(cfg, dense, masks0, calib, layer, batch_size=args.calib_batch)
            params = jax.block_until_ready(params)
        prune_s = time.time() - t0
        row = {"config": name, "method": method, "pattern": pattern or "-",
               "sparsity": round(float(sparsity.overall_sparsity(masks)), 6), "prune_seconds": round(prune_s, 1),
               "calibration": f"{args.calib}x{args.calib_len}" if method in ("wanda", "sparsegpt") else "-"}
        t1 = time.time()
        row["wikitext2_ppl"] = round(ppl(params, wiki), 3)
        row["books_ppl"] = round(ppl(params, books), 3)
        score, _ = jax_scorer(cfg, params)
        row.update({f"lambada_{k}": v for k, v in lambada_metrics(score, lam, 16).items()})
        row.update(eval_seconds=round(time.time() - t1, 1), windows=int(len(wiki)), lambada_n=args.lambada)
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        del params, masks


if __name__ == "__main__":
    main()
