"""Scores LAMBADA with transformers on a model exported by `python -m jaxprune.export --format=hf`.

    python experiments/export/score_lambada_transformers.py --model=DIR --n=200 --max_len=256

The requests (context and target ids) are built as jaxprune's harness builds them — the same task
reader, prompt and tokenisation (the exported tokenizer.json, loaded by `AutoTokenizer`) — and
scored only by transformers: `AutoModelForCausalLM.from_pretrained(DIR)` in float32 on the CPU, the
window left-truncated to `max_len` tokens, accuracy = every target token is the argmax, perplexity
= exp(total target NLL / total target tokens). Prints the aggregate and a RESULT line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, os.getcwd())  # the jaxprune checkout the run was made with (for its request builder)
from jaxprune.data.tasks import load_task  # noqa: E402
from jaxprune.evaluation import prompts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--max_len", type=int, default=256)
    ap.add_argument("--data_dir", default=os.environ.get("JAXPRUNE_DATA_DIR", "../shared/data"))
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    tok = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    data = load_task("lambada", Path(args.data_dir))
    examples = data.examples[: args.n]
    rows, correct, nll, count = [], 0, 0.0, 0
    for ex in examples:
        ctx = tok(prompts.query("lambada", ex), add_special_tokens=False)["input_ids"]
        cont = tok(prompts.targets("lambada", ex)[0], add_special_tokens=False)["input_ids"]
        full = (ctx + cont)[-(args.max_len + 1):]
        with torch.no_grad():
            logits = model(torch.tensor([full[:-1]])).logits[0].float()
        logp = torch.log_softmax(logits, -1)[-len(cont):]  # positions predicting the target tokens
        target = torch.tensor(cont)
        ll = float(logp.gather(1, target[:, None]).sum())
        greedy = bool((logp.argmax(-1) == target).all())
        rows.append({"ll": ll, "greedy": greedy, "n_tokens": len(cont)})
        correct += greedy
        nll -= ll
        count += len(cont)
    acc, ppl = correct / len(examples), float(np.exp(nll / count))
    print(f"transformers {transformers.__version__}: lambada n={len(examples)} acc={acc:.4f} ppl={ppl:.4f}")
    print(f"RESULT transformers_lambada_acc={acc:.4f} transformers_lambada_ppl={ppl:.4f} n={len(examples)}")
    if args.out:
        Path(args.out).write_text(json.dumps({"acc": acc, "ppl": ppl, "n": len(examples), "examples": rows}) + "\n")


if __name__ == "__main__":
    main()
