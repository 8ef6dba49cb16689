"""Task evaluation: read a task, build prompts, score them, compute its metrics, write a table.

    metrics = evaluate_tasks(["lambada", "hellaswag"], model, params, tokenizer, config.eval,
                             data_dir, out_dir=workdir, tag="dense")

Metrics (flat, one dict for all tasks):
  lambada_acc   fraction of passages whose target word is reproduced token by token
                by greedy decoding (every target token is the argmax under teacher forcing)
  lambada_ppl   exp(total target NLL / total target tokens)
  <mc>_acc      multiple choice (hellaswag, storycloze) by summed loglikelihood
  <mc>_acc_norm ... by loglikelihood divided by the choice's length in characters
                (lm-evaluation-harness 0.4's acc_norm)
  <qa>_em       exact match of the greedy answer (up to the first newline) against any
                alias, after metrics.normalize_answer (nq_open, webquestions, triviaqa)
  <task>_n      examples evaluated
  <metric>_stderr  standard error of each of these over the examples (windows for a corpus;
                see evaluation.metrics)
  <corpus>_ppl  perplexity of a whole text (wikitext2, books_test; see evaluation.perplexity),
                with <corpus>_loss, <corpus>_tokens (predicted tokens) and <corpus>_windows
  lmeval_<task>_<metric>  eval.lm_eval_tasks run through lm-evaluation-harness on the same
                scoring (evaluation.lm_eval_backend), with <metric>_stderr and _n
Contexts and continuations are tokenised as lm-evaluation-harness does (`encode_pairs`).
Side effects (reading data files, writing OUT_DIR/eval/<tag>.{md,json}) stay in
`evaluate_tasks`; everything it calls on scores is pure.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from jaxprune.data.tasks import TaskData, load_task
from jaxprune.evaluation import metrics as M
from jaxprune.evaluation import perplexity
from jaxprune.evaluation import prompts as P
from jaxprune.evaluation.scoring import ApplyFn, Loglikelihood, ModuleApply, generate, loglikelihood

QA_MAX_NEW_TOKENS = 24


def _encode(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)]


def encode_pairs(tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) of each (context, continuation) text pair, by lm-evaluation-harness's
    rule: whitespace ending the context moves to the continuation, and the continuation's ids are those
    that follow the context's ids in the encoding of the whole text (so a merge across the boundary is
    tokenised as in the running text)."""
    moved = []
    for ctx, cont in pairs:
        n = len(ctx) - len(ctx.rstrip())
        moved.append((ctx[:len(ctx) - n], ctx[len(ctx) - n:] + cont))
    ctx_ids = _encode(tokenizer, [c for c, _ in moved])
    whole = _encode(tokenizer, [c + t for c, t in moved])
    return [(c, w[len(c):]) for c, w in zip(ctx_ids, whole)]


def prompts_for(data: TaskData, shots: int, max_examples: int = 0) -> list[str]:
    """Prompt of each evaluated example (the first max_examples, 0 = all) with `shots` demonstrations."""
    n = len(data.examples) if max_examples <= 0 else min(max_examples, len(data.examples))
    out = []
    for i in range(n):
        picks = P.fewshot_indices(len(data.fewshot), shots, i, exclude_self=data.fewshot_is_eval)
        out.append(P.build_prompt(data.kind, data.examples[i], [data.fewshot[j] for j in picks]))
    return out


def stop_token_ids(tokenizer: Tokenizer, stops: Sequence[str]) -> list[int]:
    """Ids of every vocabulary token whose text contains a stop sequence (and the EOS token)."""
    ids = []
    for tok_id in range(tokenizer.get_vocab_size()):
        text = tokenizer.decode([tok_id], skip_special_tokens=False)
        if any(s in text for s in stops):
            ids.append(tok_id)
    eos = tokenizer.token_to_id("<|endoftext|>")
    return ids + ([eos] if eos is not None else [])


def generate_until(apply_fn: ApplyFn, params: Any, tokenizer: Tokenizer, prompts: Sequence[str], *, max_len: int,
                   batch_size: int, stops: Sequence[str] = P.QA_STOP,
                   max_new_tokens: int = QA_MAX_NEW_TOKENS, stop_ids: Sequence[int] | None = None) -> list[str]:
    """Greedy text continuation of each prompt, cut before the first stop sequence."""
    if stop_ids is None:
        stop_ids = stop_token_ids(tokenizer, stops)
    outs = generate(apply_fn, params, _encode(tokenizer, prompts), max_len=max_len, max_new_tokens=max_new_tokens,
                    batch_size=batch_size, stop_ids=stop_ids)
    return [M.cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), stops) for ids in outs]


# ---------------------------------------------------------------------------
# One function per task kind: (examples, prompts, scores) -> metrics
# ---------------------------------------------------------------------------
def lambada_metrics(results: Sequence[Loglikelihood]) -> dict[str, float]:
    """acc and token-level perplexity from one Loglikelihood per passage, with their standard errors."""
    nll = [-r.logprob for r in results]
    tokens = [r.num_tokens for r in results]
    greedy = [float(r.is_greedy) for r in results]
    return {"acc": float(np.mean(greedy)), "ppl": math.exp(sum(nll) / sum(tokens)),
            "acc_stderr": M.mean_stderr(greedy), "ppl_stderr": M.perplexity_stderr(nll, tokens)}


def multiple_choice_metrics(loglikelihoods: Sequence[Sequence[float]], choices: Sequence[Sequence[str]],
                            labels: Sequence[int]) -> dict[str, float]:
    """acc (summed loglikelihood) and acc_norm (per character of the choice text, as lm-eval 0.4), with
    their standard errors."""
    acc = [float(M.choose(ll) == y) for ll, y in zip(loglikelihoods, labels)]
    acc_norm = [float(M.choose(ll, [len(c) for c in ch]) == y)
                for ll, ch, y in zip(loglikelihoods, choices, labels)]
    return {"acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)),
            "acc_stderr": M.mean_stderr(acc), "acc_norm_stderr": M.mean_stderr(acc_norm)}


def qa_metrics(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match against any alias, with its standard error."""
    em = [float(M.exact_match(p, a)) for p, a in zip(predictions, answers)]
    return {"em": float(np.mean(em)), "em_stderr": M.mean_stderr(em)}


def loglikelihood_requests(data: TaskData, prompts: Sequence[str], tokenizer: Tokenizer
                           ) -> tuple[list[list[str]], list[tuple[list[int], list[int]]]]:
    """(continuation texts per example, flat (context ids, continuation ids) requests) of a scored task."""
    conts = [P.targets(data.kind, ex) for ex in data.examples[:len(prompts)]]
    pairs = [(prompt, c) for prompt, cs in zip(prompts, conts) for c in cs]
    return conts, encode_pairs(tokenizer, pairs)


def evaluate_task(data: TaskData, apply_fn: ApplyFn, params: Any, tokenizer: Tokenizer, *, max_len: int,
                  shots: int, max_examples: int, batch_size: int) -> dict[str, float]:
    """Metrics of one task (un-prefixed: acc, ppl, em, ..., n)."""
    prompts = prompts_for(data, shots, max_examples)
    examples = data.examples[:len(prompts)]
    if data.kind == "qa":
        preds = generate_until(apply_fn, params, tokenizer, prompts, max_len=max_len, batch_size=batch_size)
        out = qa_metrics(preds, [ex.answers for ex in examples])
    else:
        conts, requests = loglikelihood_requests(data, prompts, tokenizer)
        results = loglikelihood(apply_fn, params, requests, max_len=max_len, batch_size=batch_size)
        if data.kind == "lambada":
            out = lambada_metrics(results)
        else:
            lls, k = [], 0
            for cs in conts:
                lls.append([r.logprob for r in results[k:k + len(cs)]])
                k += len(cs)
            out = multiple_choice_metrics(lls, [ex.choices for ex in examples], [ex.label for ex in examples])
    out["n"] = len(examples)
    return out


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------
COLUMNS = ("acc", "acc_norm", "ppl", "em")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table, one row per task: task, n, shots, acc, acc_norm, ppl, em (each ± its standard error
    where known), seconds."""
    head = "| task | n | shots | " + " | ".join(COLUMNS) + " | seconds |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for r in rows:
        cells = [(f"{r[c]:.4f}" + (f" ± {r[c + '_stderr']:.4f}" if c + "_stderr" in r else "")) if c in r else ""
                 for c in COLUMNS]
        lines.append(f"| {r['task']} | {r['n']} | {r['shots']} | " + " | ".join(cells) + f" | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def write_text_atomic(path: Path, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it: a kill leaves the old file or the new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def evaluate_tasks(tasks: Sequence[str], model: Any, params: Any, tokenizer: Tokenizer, eval_cfg: Any,
                   data_dir: str | Path | None, out_dir: str | Path | None = None, tag: str = "tasks",
                   apply_fn: ApplyFn | None = None) -> dict[str, float]:
    """Evaluates `tasks` and returns flat metrics (`lambada_acc`, `hellaswag_acc_norm`, `nq_open_em`, `<task>_n`...).

    Args:
      tasks: task names (see jaxprune.data.tasks.READERS); "heldout" is skipped.
      model: the Flax Transformer (its cfg.max_len is the context length).
      params: its parameters (dense or already masked).
      tokenizer: the tokenizers.Tokenizer the model was trained with.
      eval_cfg: config.eval (shots, max_examples, batch_size; lm_eval_tasks: lm-evaluation-harness tasks
        run on the same scoring, their metrics as lmeval_<task>_<metric> with lm-eval's stderr).
      data_dir: offline data directory laid out like shared/data; None reads TFDS.
      out_dir: if set, writes OUT_DIR/eval/<tag>.md and <tag>.json.
      tag: file name of the written tables (e.g. the stage name).
      apply_fn: overrides `model.apply` (e.g. to apply masks inside the forward pass).
    """
    apply_fn = apply_fn or ModuleApply(model)
    max_len = int(model.cfg.max_len)
    flat: dict[str, float] = {}
    rows = []
    for name in tasks:
        if name == "heldout":
            continue
        t0 = time.time()
        if name in perplexity.CORPORA:
            tokens, source = perplexity.load_corpus_tokens(name, tokenizer, data_dir)
            m = perplexity.corpus_perplexity(apply_fn, params, tokens, max_len=max_len,
                                             batch_size=int(eval_cfg.batch_size),
                                             max_windows=int(eval_cfg.get("ppl_windows", 0)),
                                             batch_sharding=getattr(apply_fn, "batch_sharding", None))
            m["n"] = m["windows"]
            rows.append(dict(m, task=name, shots=0, seconds=time.time() - t0, source=source))
            flat.update({f"{name}_{k}": v for k, v in m.items() if k != "n"})
            continue
        data = load_task(name, data_dir)
        m = evaluate_task(data, apply_fn, params, tokenizer, max_len=max_len, shots=int(eval_cfg.shots),
                          max_examples=int(eval_cfg.max_examples), batch_size=int(eval_cfg.batch_size))
        rows.append(dict(m, task=name, shots=int(eval_cfg.shots), seconds=time.time() - t0, source=data.source))
        flat.update({f"{name}_{k}": v for k, v in m.items()})
    lm_tasks = list(eval_cfg.get("lm_eval_tasks", ()) or ())
    lm_table, lm_results = "", None
    if lm_tasks:
        from jaxprune.evaluation import lm_eval_backend as B
        lm = B.JaxpruneLM(model, params, tokenizer, batch_size=int(eval_cfg.batch_size), apply_fn=apply_fn,
                          batch_sharding=getattr(apply_fn, "batch_sharding", None))
        res = B.run_tasks(lm, lm_tasks, limit=int(eval_cfg.max_examples) or None, num_fewshot=int(eval_cfg.shots))
        flat.update(B.flat_metrics(res))
        lm_table = "\n" + B.format_table(res)
        lm_results = {t: {k: v for k, v in r.items() if isinstance(v, (int, float, str))}
                      for t, r in res["results"].items()}
    if out_dir is not None and (rows or lm_tasks):
        out = Path(out_dir) / "eval"
        write_text_atomic(out / f"{tag}.md", (format_table(rows) if rows else "") + lm_table)
        write_text_atomic(out / f"{tag}.json", json.dumps(
            {"tag": tag, "max_len": max_len, "max_examples": int(eval_cfg.max_examples),
             "batch_size": int(eval_cfg.batch_size), "tasks": rows, "metrics": flat,
             **({"lm_eval": lm_results} if lm_results else {})}, indent=1))
    return flat
