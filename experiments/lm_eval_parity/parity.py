"""Per-example parity of three evaluations of SmolLM2-135M on LAMBADA and HellaSwag.

    python scripts/fetch_smollm2.py
    JAXPRUNE_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 nice -n 10 \\
        python experiments/lm_eval_parity/parity.py --n 200 --out experiments/lm_eval_parity/results.json

1. own: jaxprune's harness (harness.loglikelihood_requests + scoring.loglikelihood), the
   path `jaxprune.main` / `jaxprune.evaluate` take;
2. jaxprune backend: lm-eval 0.4 (`simple_evaluate`, tasks lambada_openai_local and
   hellaswag_local) on `JaxpruneLM`;
3. HF backend: lm-eval's own `HFLM` on transformers' model built from the same GGUF file
   (transformers dequantises it; CPU, float32), same tasks.

The first N examples of each task. Per example: the loglikelihood of every continuation
(|difference| against pipeline 1), LAMBADA's is_greedy, HellaSwag's acc and acc_norm
choices. Aggregates: acc, acc_norm, lm-eval's perplexity (exp of minus the mean
per-example loglikelihood) and jaxprune's token-level lambada_ppl. Writes one JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
DATA = Path(os.environ.setdefault("JAXPRUNE_DATA_DIR", str(ROOT.parent / "shared" / "data")))
TASKS = {"lambada": "lambada_openai_local", "hellaswag": "hellaswag_local"}


def own_harness(cfg, params, tok, n: int, batch: int) -> dict:
    """Per-example loglikelihoods through jaxprune's harness path."""
    from jaxprune.data.tasks import load_task
    from jaxprune.evaluation import harness
    from jaxprune.evaluation.scoring import ModuleApply, loglikelihood
    from jaxprune.models import build_model

    model = build_model(cfg)
    out = {}
    for name in TASKS:
        data = load_task(name, DATA)
        prompts = harness.prompts_for(data, 0, n)
        conts, reqs = harness.loglikelihood_requests(data, prompts, tok)
        res = loglikelihood(ModuleApply(model), params, reqs, max_len=cfg.max_len, batch_size=batch)
        k, docs = 0, []
        for i, cs in enumerate(conts):
            docs.append({"ll": [r.logprob for r in res[k:k + len(cs)]],
                         "greedy": [r.is_greedy for r in res[k:k + len(cs)]],
                         "tokens": [r.num_tokens for r in res[k:k + len(cs)]],
                         "label": data.examples[i].label, "choices": list(data.examples[i].choices)})
            k += len(cs)
        out[name] = docs
    return out


def lm_eval_samples(lm, n: int, batch: int) -> dict:
    """Per-example loglikelihoods from lm-eval's logged samples (doc order)."""
    from jaxprune.evaluation import lm_eval_backend as B

    import lm_eval
    res = lm_eval.simple_evaluate(model=lm, tasks=list(TASKS.values()), limit=n, log_samples=True,
                                  task_manager=B.task_manager(), batch_size=batch, bootstrap_iters=0)
    out = {}
    for name, task in TASKS.items():
        docs = []
        for s in sorted(res["samples"][task], key=lambda s: s["doc_id"]):
            resps = [r[0] for r in s["resps"]]  # one (loglikelihood, is_greedy) per request
            docs.append({"ll": [float(r[0]) for r in resps], "greedy": [bool(r[1]) for r in resps],
                         "label": int(s["target"]) if name == "hellaswag" else 0})
        out[name] = {"docs": docs, "metrics": {k: v for k, v in res["results"][task].items()
                                               if isinstance(v, (int, float))}}
    return out


def decisions(docs: list[dict], name: str) -> dict:
    """acc / acc_norm decisions and aggregates from per-example loglikelihoods."""
    if name == "lambada":
        ll = np.array([d["ll"][0] for d in docs])
        out = {"acc": float(np.mean([d["greedy"][0] for d in docs])), "perplexity": math.exp(-ll.mean())}
        if "tokens" in docs[0]:
            out["token_ppl"] = math.exp(-ll.sum() / sum(d["tokens"][0] for d in docs))
        return out
    pred = [int(np.argmax(d["ll"])) for d in docs]
    out = {"acc": float(np.mean([p == d["label"] for p, d in zip(pred, docs)])), "pred": pred}
    if "choices" in docs[0]:
        chars = [int(np.argmax(np.array(d["ll"]) / [len(c) for c in d["choices"]])) for d in docs]
        utf8 = [int(np.argmax(np.array(d["ll"]) / [len(c.encode()) for c in d["choices"]])) for d in docs]
        out.update(acc_norm=float(np.mean([p == d["label"] for p, d in zip(chars, docs)])), pred_norm=chars,
                   acc_norm_utf8_bytes=float(np.mean([p == d["label"] for p, d in zip(utf8, docs)])),
                   norm_decisions_chars_vs_bytes_differ=int(sum(a != b for a, b in zip(chars, utf8))))
    return out


def compare(a: list[dict], b: list[dict], name: str, ref: list[dict]) -> dict:
    """Per-request differences of b against a; ref (the own harness) gives the choice texts."""
    diffs = [abs(x - y) for da, db in zip(a, b) for x, y in zip(da["ll"], db["ll"])]
    out = {"n": len(a), "requests": len(diffs), "max_abs_ll_diff": max(diffs), "mean_abs_ll_diff": float(np.mean(diffs)),
           "requests_over_1e-4": int(sum(d > 1e-4 for d in diffs)),
           "greedy_flags_differ": int(sum(x != y for da, db in zip(a, b) for x, y in zip(da["greedy"], db["greedy"])))}
    if name == "hellaswag":
        pa = [int(np.argmax(d["ll"])) for d in a]
        pb = [int(np.argmax(d["ll"])) for d in b]
        out["acc_choices_differ"] = int(sum(x != y for x, y in zip(pa, pb)))
        lens = [[len(c) for c in d["choices"]] for d in ref]
        na = [int(np.argmax(np.array(d["ll"]) / ln)) for d, ln in zip(a, lens)]
        nb = [int(np.argmax(np.array(d["ll"]) / ln)) for d, ln in zip(b, lens)]
        out["acc_norm_choices_differ"] = int(sum(x != y for x, y in zip(na, nb)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--gguf", default="")
    ap.add_argument("--out", default="")
    ap.add_argument("--skip_hf", action="store_true")
    args = ap.parse_args()

    import ml_collections

    from jaxprune.evaluation.lm_eval_backend import JaxpruneLM
    from jaxprune.models import build_model, load_pretrained, load_pretrained_tokenizer, model_config_from_preset
    from jaxprune.models.fetch import fetch

    path = Path(args.gguf) if args.gguf else fetch("smollm2")
    c = ml_collections.ConfigDict({"model": {"init": "gguf", "init_path": str(path)}})
    cfg = model_config_from_preset("smollm2-135m")
    params, tok = load_pretrained(c, cfg), load_pretrained_tokenizer(c)
    result: dict = {"gguf": path.name, "n": args.n, "seconds": {}}

    t0 = time.time()
    own = own_harness(cfg, params, tok, args.n, args.batch)
    result["seconds"]["own"] = round(time.time() - t0, 1)
    print(f"own harness: {result['seconds']['own']} s", flush=True)
    t0 = time.time()
    jb = lm_eval_samples(JaxpruneLM(build_model(cfg), params, tok, batch_size=args.batch), args.n, args.batch)
    result["seconds"]["jaxprune_backend"] = round(time.time() - t0, 1)
    print(f"lm-eval + jaxprune backend: {result['seconds']['jaxprune_backend']} s", flush=True)
    pipelines = {"own": own, "jaxprune_backend": {k: v["docs"] for k, v in jb.items()}}
    lm_eval_metrics = {"jaxprune_backend": {k: v["metrics"] for k, v in jb.items()}}
    if not args.skip_hf:
        import torch
        import transformers
        from lm_eval.models.huggingface import HFLM

        t0 = time.time()
        htok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        hmodel = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                   dtype=torch.float32).eval()
        hb = lm_eval_samples(HFLM(pretrained=hmodel, tokenizer=htok, batch_size=args.batch, device="cpu",
                                  max_length=cfg.max_len), args.n, args.batch)
        result["seconds"]["hf_backend"] = round(time.time() - t0, 1)
        print(f"lm-eval + HF backend: {result['seconds']['hf_backend']} s", flush=True)
        pipelines["hf_backend"] = {k: v["docs"] for k, v in hb.items()}
        lm_eval_metrics["hf_backend"] = {k: v["metrics"] for k, v in hb.items()}

    result["aggregates"] = {p: {t: {k: v for k, v in decisions(docs[t], t).items() if not k.startswith("pred")}
                                for t in TASKS} for p, docs in pipelines.items()}
    result["lm_eval_reported"] = lm_eval_metrics
    result["per_example_vs_own"] = {p: {t: compare(own[t], docs[t], t, own[t]) for t in TASKS}
                                    for p, docs in pipelines.items() if p != "own"}
    if "hf_backend" in pipelines:
        result["per_example_jaxprune_backend_vs_hf"] = {
            t: compare(pipelines["jaxprune_backend"][t], pipelines["hf_backend"][t], t, own[t]) for t in TASKS}
    result["examples"] = {p: docs for p, docs in pipelines.items()}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    summary = {k: v for k, v in result.items() if k != "examples"}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
