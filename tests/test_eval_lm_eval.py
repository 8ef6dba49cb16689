"""The lm-eval backend against jaxprune's own harness, on a tiny random model and the offline task files.

lm-eval (through JaxpruneLM and the packaged *_local tasks) and the own harness must give the
same per-example loglikelihoods (the same jitted scoring) and the same metrics. The heavy test
pins the same on SmolLM2-135M against lm-eval's HF backend (experiments/lm_eval_parity has the
full 200-example comparison).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

pytest.importorskip("lm_eval")

from jaxprune.data.tasks import load_task  # noqa: E402
from jaxprune.data.tokenizer import train_bpe  # noqa: E402
from jaxprune.evaluation import harness  # noqa: E402
from jaxprune.evaluation import lm_eval_backend as B  # noqa: E402
from jaxprune.evaluation.scoring import ModuleApply, loglikelihood  # noqa: E402
from jaxprune.models import ModelConfig, build_model, init_params  # noqa: E402

DATA = Path(os.environ.get("JAXPRUNE_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")
CFG = ModelConfig(vocab_size=512, max_len=64, n_layer=2, d_model=64, n_head=4, d_ff=256)  # as test_eval_scoring
N = 6


@pytest.fixture(autouse=True)
def data_dir(monkeypatch):
    """The packaged task files read $JAXPRUNE_DATA_DIR."""
    monkeypatch.setenv("JAXPRUNE_DATA_DIR", str(DATA))


@pytest.fixture(scope="module")
def setup():
    with open(DATA / "lambada" / "lambada_test.jsonl") as f:
        tok = train_bpe([json.loads(next(f))["text"] for _ in range(400)], 512)
    model = build_model(CFG)
    params = jax.jit(lambda k: jax.tree.map(lambda x: 3 * x, init_params(model, k)[0]))(jax.random.key(0))
    return model, params, tok


def test_backend_equals_own_harness_per_example_and_in_the_pipeline(setup, tmp_path):
    model, params, tok = setup
    lm = B.JaxpruneLM(model, params, tok, batch_size=8)
    res = B.run_tasks(lm, ["lambada_openai_local", "hellaswag_local"], limit=N, log_samples=True, bootstrap_iters=0)
    for name, task in (("lambada", "lambada_openai_local"), ("hellaswag", "hellaswag_local")):
        data = load_task(name, DATA)
        conts, reqs = harness.loglikelihood_requests(data, harness.prompts_for(data, 0, N), tok)
        own = loglikelihood(ModuleApply(model), params, reqs, max_len=64, batch_size=8)
        samples = sorted(res["samples"][task], key=lambda s: s["doc_id"])
        theirs = [r[0] for s in samples for r in s["resps"]]
        assert len(theirs) == len(own) == sum(len(c) for c in conts)
        assert [float(t[0]) for t in theirs] == [r.logprob for r in own]  # the same function: exactly equal
        assert [bool(t[1]) for t in theirs] == [r.is_greedy for r in own]
    lam = [r[0][0] for s in sorted(res["samples"]["lambada_openai_local"], key=lambda s: s["doc_id"])
           for r in s["resps"]]
    assert res["results"]["lambada_openai_local"]["perplexity,none"] == pytest.approx(
        math.exp(-np.mean([float(x) for x in lam])))

    # the pipeline: eval.lm_eval_tasks next to the own tasks, the same numbers, one table
    cfg = ml_collections.ConfigDict(dict(shots=0, max_examples=N, batch_size=8,
                                         lm_eval_tasks=("lambada_openai_local", "hellaswag_local")))
    m = harness.evaluate_tasks(["lambada", "hellaswag"], model, params, tok, cfg, DATA, out_dir=tmp_path, tag="s")
    assert m["lmeval_lambada_openai_local_acc"] == m["lambada_acc"]
    assert m["lmeval_hellaswag_local_acc"] == m["hellaswag_acc"]
    assert m["lmeval_hellaswag_local_acc_norm"] == m["hellaswag_acc_norm"]
    assert m["lmeval_hellaswag_local_n"] == N and "lmeval_hellaswag_local_acc_stderr" in m
    table = (tmp_path / "eval" / "s.md").read_text()
    assert "| lm-eval task | metric | value | stderr | n |" in table and "| hellaswag_local | acc_norm |" in table
    assert json.loads((tmp_path / "eval" / "s.json").read_text())["lm_eval"]["hellaswag_local"]["alias"]


def test_rolling_and_generation_requests(setup):
    from lm_eval.api.instance import Instance

    model, params, tok = setup
    lm = B.JaxpruneLM(model, params, tok, batch_size=8)
    text = "the man said that he would come back"
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = tok.encode(text, add_special_tokens=False).ids
    (ref,) = loglikelihood(ModuleApply(model), params, [([lm.prefix_token_id], ids)], max_len=64, batch_size=8)
    assert total == ref.logprob and ref.num_tokens == len(ids)

    prompts = ["Q: who wrote hamlet\nA:", "Q: what is the capital of france\nA:"]
    reqs = [Instance("generate_until", {}, (p, {"until": ["\n"], "max_gen_toks": 12}), i) for i, p in enumerate(prompts)]
    got = lm.generate_until(reqs)
    assert got == harness.generate_until(ModuleApply(model), params, tok, prompts, max_len=64, batch_size=8,
                                         max_new_tokens=12)
    assert all("\n" not in g for g in got) and any(g for g in got)


def test_cli_fails_at_once_for_a_hub_task_offline():
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "jaxprune.lm_eval", "--model", "jaxprune", "--model_args",
                           "init=gguf,path=/nonexistent.gguf", "--tasks", "hellaswag,lambada_openai_local"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: lm-eval tasks that download from the Hugging Face hub cannot run offline: "
                           "hellaswag (local: hellaswag_local)")


def test_unknown_lm_eval_task_fails_before_any_compute(tmp_path):
    import tiny_config

    from jaxprune import experiment
    from jaxprune.config import ConfigError

    c = tiny_config.get_config()
    c.data.data_dir = str(DATA)
    c.eval.lm_eval_tasks = ("lambada_openai_locl", "hellaswag_local", "no_such_task_xyz")
    with pytest.raises(ConfigError) as e:
        experiment.Experiment(c, tmp_path / "run", progress=False)
    head, first, second = str(e.value).splitlines()  # one line per unknown name; the closest first
    assert head == "invalid config:"
    assert first.startswith("  - eval.lm_eval_tasks: unknown lm-eval task 'lambada_openai_locl' "
                            "(did you mean lambada_openai_local, ")
    assert second == "  - eval.lm_eval_tasks: unknown lm-eval task 'no_such_task_xyz' (`lm-eval ls tasks` lists " \
                     "lm-eval's own)"
    assert not (tmp_path / "run" / "config.json").exists()
    # the command line: exit code 2 (jaxprune/cli.py), the error line and its problem, no traceback
    work = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "jaxprune.main", "--config=tests/tiny_config.py", f"--workdir={work}",
                           f"--config.data.data_dir={DATA}", "--config.eval.lm_eval_tasks=('hellaswag_locl',)"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-2] == "error: invalid config:" and sum(x.startswith("error:") for x in lines) == 1
    assert lines[-1].startswith("  - eval.lm_eval_tasks: unknown lm-eval task 'hellaswag_locl' (did you mean "
                                "hellaswag_local, ")
    assert not (work / "config.json").exists()


@pytest.mark.heavy
def test_smollm2_backend_matches_lm_eval_hf_backend():
    """SmolLM2-135M (GGUF), 4 LAMBADA and 4 HellaSwag examples: lm-eval on JaxpruneLM and on HFLM
    (transformers from the same GGUF, float32 CPU, log-softmax in float64) agree per request within
    1e-4 and on every decision. HFLM's default float32 log-softmax over the 49,152-token vocabulary
    overestimates loglikelihoods by ~9e-6 per token (experiments/lm_eval_parity/README.md, measured
    against a float64 evaluation), which would exceed 1e-4 on long HellaSwag endings."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from jaxprune.models.fetch import fetch
    from jaxprune.lm_eval import load_checkpoint

    path = fetch("smollm2")
    ours = B.JaxpruneLM(batch_size=8, **load_checkpoint("gguf", str(path)))
    hmodel = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                               dtype=torch.float32).eval()
    htok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    theirs = HFLM(pretrained=hmodel, tokenizer=htok, batch_size=8, device="cpu", max_length=ours.max_len,
                  softmax_dtype="float64")
    out = []
    for lm in (ours, theirs):
        res = lm_eval.simple_evaluate(model=lm, tasks=["lambada_openai_local", "hellaswag_local"], limit=4,
                                      log_samples=True, task_manager=B.task_manager(), bootstrap_iters=0)
        out.append({t: [[r[0] for r in s["resps"]] for s in sorted(res["samples"][t], key=lambda s: s["doc_id"])]
                    for t in res["samples"]})
    for task in out[0]:
        for a, b in zip(out[0][task], out[1][task]):
            assert [x[1] for x in a] == [x[1] for x in b]
            np.testing.assert_allclose([float(x[0]) for x in a], [float(x[0]) for x in b], atol=1e-4, rtol=0)
            assert np.argmax([x[0] for x in a]) == np.argmax([x[0] for x in b])
