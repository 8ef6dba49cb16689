"""SmolLM2-135M-Instruct (Q4_1 GGUF): jaxprune's import against transformers' own GGUF loading.

    python scripts/fetch_smollm2.py
    python experiments/smollm2/parity_lambada.py --n 500 > experiments/smollm2/parity_lambada.txt

Reports (1) the max abs logit difference on a few real sentences (same token ids into both
models), (2) tokenisation agreement of jaxprune's GGUF tokenizer with transformers' tokenizer
from the same file on the LAMBADA texts, and (3) LAMBADA (OpenAI version, first N examples of
lambada_test.jsonl) accuracy and perplexity, each pipeline with its own tokenizer and model:
target = last word with its leading space, context = the text before it; acc = every target
token is the greedy argmax; ppl = exp(total target NLL / target tokens) ("token ppl"), and
lm-eval-harness's exp(-mean per-example log-likelihood) ("example ppl").
Needs `accelerate` (transformers' GGUF loader). Self-contained: no jaxprune.evaluation.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DATA = Path(os.environ.get("JAXPRUNE_DATA_DIR", "/work/shared/data"))
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "In 1998, she moved to Paris with her two brothers and opened a small bakery near the river.",
    "Gradient descent updates the parameters in the direction of the negative gradient of the loss.",
]


# ---------------------------------------------------------------------------
# LAMBADA, computed directly
# ---------------------------------------------------------------------------
def lambada_examples(n: int, path: Path | None = None) -> list[tuple[str, str]]:
    """(context, target) of the first n texts; target = last word with its leading space."""
    path = path or DATA / "lambada" / "lambada_test.jsonl"
    out = []
    with open(path) as f:
        for line in f:
            text = json.loads(line)["text"]
            ctx, word = text.rsplit(" ", 1)
            out.append((ctx, " " + word))
            if len(out) == n:
                break
    return out


def encode_examples(encode: Callable[[str], list[int]], examples: Sequence[tuple[str, str]]
                    ) -> list[tuple[list[int], list[int]]]:
    """Context and target encoded separately (as lm-evaluation-harness does)."""
    return [(encode(c), encode(t)) for c, t in examples]


def batches(encoded: Sequence[tuple[list[int], list[int]]], batch_size: int, bucket: int = 32):
    """Yields (indices, inputs (B, T), labels (B, T), target mask (B, T)), length-sorted, T a multiple of bucket."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        full = [encoded[i][0] + encoded[i][1] for i in idx]
        t = max(len(f) for f in full) - 1
        t = -(-t // bucket) * bucket
        inputs = np.zeros((batch_size, t), np.int32)
        labels = np.zeros((batch_size, t), np.int32)
        mask = np.zeros((batch_size, t), bool)
        for r, (i, f) in enumerate(zip(idx, full)):
            inputs[r, : len(f) - 1] = f[:-1]
            labels[r, : len(f) - 1] = f[1:]
            c = len(encoded[i][0])
            mask[r, c - 1: len(f) - 1] = True  # positions predicting the target tokens
        yield idx, inputs, labels, mask


def lambada_metrics(score_fn: Callable, encoded: Sequence[tuple[list[int], list[int]]], batch_size: int = 16
                    ) -> dict[str, float]:
    """score_fn(inputs, labels) -> (log p(label) (B, T), label == argmax (B, T)) as numpy."""
    ll = np.zeros(len(encoded))
    hit = np.zeros(len(encoded), bool)
    ntok = 0
    for idx, inputs, labels, mask in batches(encoded, batch_size):
        lp, am = score_fn(inputs, labels)
        for r, i in enumerate(idx):
            ll[i] = float(np.sum(lp[r][mask[r]]))
            hit[i] = bool(np.all(am[r][mask[r]]))
        ntok += int(mask.sum())
    return {"acc": float(hit.mean()), "token_ppl": math.exp(-ll.sum() / ntok),
            "example_ppl": math.exp(-ll.mean()), "target_tokens": ntok, "n": len(encoded)}


# ---------------------------------------------------------------------------
# The two pipelines
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _jax_fns(model_cfg) -> tuple[Callable, Callable]:
    """Jitted (score, logits) of one architecture, shared by every params (one compile per shape)."""
    import jax
    import jax.numpy as jnp

    from jaxprune.models import Transformer

    model = Transformer(model_cfg)

    @jax.jit
    def score(params, inputs, labels):
        logits = model.apply({"params": params}, inputs)  # (B, T, V)
        lp = jax.nn.log_softmax(logits, axis=-1)
        return (jnp.take_along_axis(lp, labels[..., None], -1)[..., 0], jnp.argmax(logits, -1) == labels)

    return score, jax.jit(lambda p, x: model.apply({"params": p}, x))


def jax_scorer(model_cfg, params) -> tuple[Callable, Callable]:
    """(score_fn for lambada_metrics, logits_fn (B, T) -> (B, T, V)) of jaxprune's Transformer."""
    score, logits_fn = _jax_fns(model_cfg)
    return (lambda x, y: tuple(np.asarray(a) for a in score(params, x, y)),
            lambda x: np.asarray(logits_fn(params, x)))


def torch_scorer(model) -> tuple[Callable, Callable]:
    import torch

    def score(inputs, labels):
        with torch.no_grad():
            logits = model(torch.tensor(inputs, dtype=torch.long)).logits.float()
            lp = torch.log_softmax(logits, -1)
            y = torch.tensor(labels, dtype=torch.long)
            return (lp.gather(-1, y[..., None])[..., 0].numpy(), (logits.argmax(-1) == y).numpy())

    def logits(x):
        with torch.no_grad():
            return model(torch.tensor(x, dtype=torch.long)).logits.float().numpy()

    return score, logits


def load_jaxprune(gguf_path: Path):
    """(ModelConfig from the smollm2-135m preset, params, tokenizer) through jaxprune's public API."""
    import ml_collections

    from jaxprune.models import load_pretrained, load_pretrained_tokenizer, model_config_from_preset

    c = ml_collections.ConfigDict({"model": {"init": "gguf", "init_path": str(gguf_path)}})
    cfg = model_config_from_preset("smollm2-135m")
    return cfg, load_pretrained(c, cfg), load_pretrained_tokenizer(c)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=500, help="first N LAMBADA examples")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gguf", default="", help="path of the .gguf (default: fetch smollm2 into the cache)")
    ap.add_argument("--json", default="", help="also write the results here")
    args = ap.parse_args()

    import torch
    import transformers

    from jaxprune.models.fetch import fetch

    path = Path(args.gguf) if args.gguf else fetch("smollm2")
    t0 = time.time()
    cfg, params, tok = load_jaxprune(path)
    t_jload = time.time() - t0
    t0 = time.time()
    htok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    hmodel = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    t_hload = time.time() - t0
    j_score, j_logits = jax_scorer(cfg, params)
    h_score, h_logits = torch_scorer(hmodel)
    res: dict = {"gguf": path.name, "load_s": {"jaxprune": round(t_jload, 1), "transformers": round(t_hload, 1)}}

    # (1) logits on real sentences, same ids into both models.
    diffs, scale = [], []
    for s in SENTENCES:
        ids = np.array([tok.encode(s).ids], np.int32)
        a, b = j_logits(ids), h_logits(ids)
        diffs.append(float(np.abs(a - b).max()))
        scale.append(float(np.abs(b).max()))
    res["logits_max_abs_diff"] = max(diffs)
    res["logits_max_abs"] = max(scale)
    res["sentence_tokens_equal"] = all(tok.encode(s).ids == htok(s, add_special_tokens=False)["input_ids"]
                                       for s in SENTENCES)

    # (2) tokenisation of the LAMBADA contexts and targets.
    examples = lambada_examples(args.n)
    enc_j = encode_examples(lambda s: tok.encode(s).ids, examples)
    enc_h = encode_examples(lambda s: htok(s, add_special_tokens=False)["input_ids"], examples)
    res["lambada_tokenisation_equal"] = f"{sum(a == b for a, b in zip(enc_j, enc_h))}/{len(examples)}"

    # (3) LAMBADA, each pipeline end to end.
    for name, fn, enc in (("jaxprune", j_score, enc_j), ("transformers", h_score, enc_h)):
        t0 = time.time()
        m = lambada_metrics(fn, enc, args.batch)
        m["seconds"] = round(time.time() - t0, 1)
        res[f"lambada_{name}"] = m
        print(name, m, file=sys.stderr, flush=True)

    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
