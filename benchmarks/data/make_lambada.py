"""Writes lambada_test.npz: the 5153 LAMBADA (OpenAI) test requests, tokenised, for benchmarks/gpu_suite.py.

The device machine gets only the checkout, so the GPU suite carries its evaluation data: every
(context, target word) request exactly as jaxprune.evaluation.harness builds it (zero-shot
prompt, target with its leading space), encoded with the SmolLM2-135M GGUF's byte-level BPE
(49152 ids, so valid for GPT-2's 50257-token vocabulary too, with GPT-2-like token counts).
Stored as uint16 flat arrays with offsets, compressed.

    JAXPRUNE_DATA_DIR=/work/shared/data python benchmarks/data/make_lambada.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from jaxprune.data.tasks import lambada
from jaxprune.evaluation import prompts as P
from jaxprune.models import import_gguf
from jaxprune.models.fetch import FILES, cache_dir

OUT = Path(__file__).resolve().parent / "lambada_test.npz"


def main() -> None:
    data = lambada.load(Path(os.environ["JAXPRUNE_DATA_DIR"]))
    tok = import_gguf.gguf_tokenizer(import_gguf.open_gguf(Path(cache_dir()) / FILES["smollm2"].filename))
    prompts = [P.build_prompt(data.kind, ex, []) for ex in data.examples]
    targets = [P.targets(data.kind, ex)[0] for ex in data.examples]
    enc = lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]  # noqa: E731
    ctx, cont = enc(prompts), enc(targets)
    flat = lambda seqs: (np.concatenate([np.asarray(s, np.uint16) for s in seqs]),  # noqa: E731
                         np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64))
    (c, co), (t, to) = flat(ctx), flat(cont)
    np.savez_compressed(OUT, context=c, context_offsets=co, target=t, target_offsets=to,
                        vocab_size=np.int64(tok.get_vocab_size()))
    print(f"{OUT}: {len(ctx)} requests, {len(c) + len(t)} tokens, {OUT.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
