"""evaluate_tasks on every task with the real data: metric names, counts, tables, determinism."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import jax
import ml_collections
import pytest

from jaxprune.data.tasks import load_task
from jaxprune.data.tokenizer import train_bpe
from jaxprune.evaluation import harness, prompts
from jaxprune.models import ModelConfig, build_model, init_params

DATA = Path(os.environ.get("JAXPRUNE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
CFG = ModelConfig(vocab_size=512, max_len=64, n_layer=2, d_model=64, n_head=4, d_ff=256)  # as test_eval_scoring
TASKS = ("heldout", "lambada", "hellaswag", "storycloze", "nq_open", "webquestions", "triviaqa")


def test_evaluate_tasks_all_tasks(tmp_path):
    with open(DATA / "lambada" / "lambada_test.jsonl") as f:
        tok = train_bpe([json.loads(next(f))["text"] for _ in range(400)], 512)
    model = build_model(CFG)
    params = jax.jit(lambda k: init_params(model, k)[0])(jax.random.key(0))
    cfg = ml_collections.ConfigDict(dict(shots=2, max_examples=5, batch_size=8))
    m = harness.evaluate_tasks(TASKS, model, params, tok, cfg, DATA, out_dir=tmp_path, tag="dense")
    values = {"lambada_acc", "lambada_ppl", "hellaswag_acc", "hellaswag_acc_norm", "storycloze_acc",
              "storycloze_acc_norm", "nq_open_em", "webquestions_em", "triviaqa_em"}
    assert set(m) == values | {f"{k}_stderr" for k in values} | {
        f"{t}_n" for t in ("lambada", "hellaswag", "storycloze", "nq_open", "webquestions", "triviaqa")}
    for k, v in m.items():
        if k.endswith("_stderr"):
            base = m[k[:-len("_stderr")]]
            if k == "lambada_ppl_stderr":
                assert v >= 0.0
            else:  # a mean of five 0/1 values: the sample std / sqrt(5)
                assert v == pytest.approx(math.sqrt(base * (1 - base) * 5 / 4 / 5), abs=1e-12)
        elif k.endswith("_n"):
            assert v == 5
        elif k == "lambada_ppl":
            assert v > 1.0
        else:
            assert 0.0 <= v <= 1.0 and round(v * 5, 6) == round(v * 5)  # a multiple of 1/5
    table = (tmp_path / "eval" / "dense.md").read_text()
    assert table.splitlines()[0] == "| task | n | shots | acc | acc_norm | ppl | em | seconds |"
    assert len(table.splitlines()) == 2 + 6 and "| hellaswag | 5 | 2 |" in table
    saved = json.loads((tmp_path / "eval" / "dense.json").read_text())
    assert saved["metrics"] == pytest.approx(m) and [r["task"] for r in saved["tasks"]] == list(TASKS[1:])
    # Deterministic, and independent of how many examples are evaluated.
    cfg3 = ml_collections.ConfigDict(dict(shots=2, max_examples=3, batch_size=8))
    again = harness.evaluate_tasks(["storycloze"], model, params, tok, cfg3, DATA)
    assert again["storycloze_n"] == 3
    assert not (tmp_path / "eval" / "tasks.md").exists()


def test_prompts_take_first_examples_with_fixed_shots():
    data = load_task("webquestions", DATA)
    five = harness.prompts_for(data, shots=3, max_examples=5)
    assert harness.prompts_for(data, shots=3, max_examples=2) == five[:2]
    assert len(harness.prompts_for(data, shots=0, max_examples=0)) == 2032
    assert harness.prompts_for(data, shots=0, max_examples=1) == ["Q: what does jamaican people speak?\nA:"]
    first = five[0].split("\n\n")
    assert len(first) == 4 and first[-1] == "Q: what does jamaican people speak?\nA:"
    assert all(s.startswith("Q: ") and "\nA: " in s for s in first[:3])  # demonstrations from trainmodel.json
    train_questions = {ex.context for ex in data.fewshot}
    assert all(s[3:s.index("\nA: ")] in train_questions for s in first[:3])
    lam = load_task("lambada", DATA)
    for i, p in enumerate(harness.prompts_for(lam, shots=1, max_examples=20)):
        (j,) = prompts.fewshot_indices(len(lam.fewshot), 1, i, exclude_self=True)
        assert j != i
        assert p == lam.examples[j].context + " " + lam.examples[j].choices[0] + "\n\n" + lam.examples[i].context
