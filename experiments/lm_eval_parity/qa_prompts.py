"""NQ-open and TriviaQA: the own harness's protocol against lm-eval's, on the same model and questions.

    JAXPRUNE_DATA_DIR=/work/shared/data HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 nice -n 15 \\
        python experiments/lm_eval_parity/qa_prompts.py --n 100 --out experiments/lm_eval_parity/qa_prompts.json

SmolLM2-135M-Instruct (GGUF), zero-shot, the first N questions of each task, generated greedily:

* own: jaxprune's harness (`harness.generate_until`: prompt "Q: {question}\\nA:", stop at "\\n",
  24 new tokens, `metrics.exact_match`: lower-case, no punctuation, no articles, collapsed whitespace,
  any alias);
* lm-eval: lm-eval 0.4 on the jaxprune backend, tasks nq_open_local / triviaqa_local (lm-eval's own
  nq_open / triviaqa definitions: NQ "Answer these questions:\\n\\nQ: {question}?\\nA:", TriviaQA
  "Question: {question}?\\nAnswer:", stop at "\\n", "." or ",", up to 256 new tokens, exact match after
  strip, lower-case and deleting punctuation (NQ also deletes articles followed by a space), any alias).

Each side's answers are also scored with the other side's metric, which separates the effect of the
prompt and stop strings (same metric, different answers) from that of the metric (same answers).
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
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
DATA = Path(os.environ.setdefault("JAXPRUNE_DATA_DIR", str(ROOT.parent / "shared" / "data")))
TASKS = {"nq_open": "nq_open_local", "triviaqa": "triviaqa_local"}
# the metric settings of jaxprune/evaluation/lm_eval_tasks/{nq_open,triviaqa}_local.yaml (lm-eval's own)
LM_EVAL_METRIC = {"nq_open": dict(ignore_case=True, ignore_punctuation=True,
                                  regexes_to_ignore=["\\b(?:The |the |An |A |The |a |an )"]),
                  "triviaqa": dict(ignore_case=True, ignore_punctuation=True)}


def lm_eval_match(task: str, prediction: str, answers: list[str]) -> bool:
    """lm-eval's exact_match of one (whitespace-stripped) answer against every alias, true if any matches."""
    from lm_eval.api.metrics import exact_match_hf_evaluate
    return bool(exact_match_hf_evaluate(predictions=[prediction.strip()] * len(answers), references=list(answers),
                                        **LM_EVAL_METRIC[task])["exact_match"] > 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import ml_collections

    from jaxprune.data.tasks import load_task
    from jaxprune.evaluation import harness
    from jaxprune.evaluation import lm_eval_backend as B
    from jaxprune.evaluation import metrics as M
    from jaxprune.evaluation.scoring import ModuleApply
    from jaxprune.models import build_model, load_pretrained, load_pretrained_tokenizer, model_config_from_preset
    from jaxprune.models.fetch import fetch

    path = fetch("smollm2")
    c = ml_collections.ConfigDict({"model": {"init": "gguf", "init_path": str(path)}})
    cfg = model_config_from_preset("smollm2-135m")
    params, tok = load_pretrained(c, cfg), load_pretrained_tokenizer(c)
    model = build_model(cfg)
    lm = B.JaxpruneLM(model, params, tok, batch_size=args.batch)
    out: dict = {"gguf": path.name, "n": args.n, "tasks": {}}
    for name, local in TASKS.items():
        data = load_task(name, DATA)
        examples = data.examples[:args.n]
        prompts = harness.prompts_for(data, 0, args.n)
        t0 = time.time()
        own = harness.generate_until(ModuleApply(model), params, tok, prompts, max_len=cfg.max_len,
                                     batch_size=args.batch)
        own_s = time.time() - t0
        t0 = time.time()
        res = B.run_tasks(lm, [local], limit=args.n, log_samples=True, bootstrap_iters=0)
        lm_s = time.time() - t0
        samples = sorted(res["samples"][local], key=lambda s: s["doc_id"])
        assert [s["doc"]["question"] for s in samples] == [ex.context for ex in examples]
        theirs = [s["filtered_resps"][0] for s in samples]
        rows = []
        for ex, prompt, s, a, b in zip(examples, prompts, samples, own, theirs):
            rows.append({"question": ex.context, "own_prompt": prompt, "lm_eval_prompt": s["arguments"][0][0],
                         "own_answer": a, "lm_eval_answer": b, "answers": list(ex.answers)[:5],
                         "own_em_own_metric": M.exact_match(a, ex.answers),
                         "own_em_lm_eval_metric": lm_eval_match(name, a, list(ex.answers)),
                         "lm_eval_em_lm_eval_metric": bool(s["exact_match"]),
                         "lm_eval_em_own_metric": M.exact_match(b, ex.answers)})
        mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
        out["tasks"][name] = {
            "lm_eval_task": local, "seconds": {"own": round(own_s, 1), "lm_eval": round(lm_s, 1)},
            "em": {k: mean(k) for k in ("own_em_own_metric", "own_em_lm_eval_metric", "lm_eval_em_own_metric",
                                        "lm_eval_em_lm_eval_metric")},
            "lm_eval_reported_exact_match": res["results"][local].get("exact_match,remove_whitespace"),
            "same_normalised_answer": int(sum(M.normalize_answer(r["own_answer"]) == M.normalize_answer(
                r["lm_eval_answer"]) for r in rows)),
            "metrics_disagree_on_own_answers": int(sum(r["own_em_own_metric"] != r["own_em_lm_eval_metric"]
                                                       for r in rows)),
            "metrics_disagree_on_lm_eval_answers": int(sum(r["lm_eval_em_own_metric"] != r["lm_eval_em_lm_eval_metric"]
                                                           for r in rows)),
            "examples": rows}
        print(name, json.dumps({k: v for k, v in out["tasks"][name].items() if k != "examples"}), flush=True)
        for r in rows[:4]:
            print(json.dumps({k: r[k] for k in ("own_prompt", "own_answer", "lm_eval_prompt", "lm_eval_answer",
                                                "answers")}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
