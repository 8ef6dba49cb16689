"""A new user's round trip: a sharded HF LLaMA (with its tokenizer.json) comes in through
`model.init=hf, preset=auto`, is pruned to 50 % and fine-tuned by the pipeline, and leaves through
`python -m jaxprune.export --format=hf`; transformers loads the directory and computes the same logits
as jaxprune's masked model. Bad input to either end exits 2 with one line, before any compute."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from jaxprune import experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, shared_tokenizer):
    torch.manual_seed(5)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    d = tmp_path_factory.mktemp("llama_in")
    transformers.LlamaForCausalLM(cfg).save_pretrained(d, max_shard_size="100KB")
    (d / "tokenizer.json").write_text(Path(shared_tokenizer).read_text())
    return d


def _overrides(config) -> list[str]:
    return [f"--config.data.data_dir={config.data.data_dir}", f"--config.data.cache_dir={config.data.cache_dir}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, hf_dir, data_dir, shared_tokenizer, token_cache):
    from conftest import tiny_config

    config = tiny_config(data_dir, shared_tokenizer, token_cache, **{
        "model.init": "hf", "model.init_path": str(hf_dir), "model.preset": "auto", "model.vocab_size": None,
        "data.tokenizer": "", "pretrain.steps": 0, "finetune.steps": 2, "finetune.control": False,
        "pruning.rates": (0.5,)})
    workdir = tmp_path_factory.mktemp("hf_run")
    rows = experiment.run(config, workdir, progress=False)
    return config, workdir, rows


def _export(workdir, *args):
    return subprocess.run([sys.executable, "-m", "jaxprune.export", f"--workdir={workdir}", *args], cwd=ROOT,
                          capture_output=True, text=True)


def test_hf_in_prune_export_out_matches_transformers(run, tmp_path):
    config, workdir, rows = run
    assert [r["stage"] for r in rows] == ["dense", "prune_1"] and rows[1]["sparsity"] == 0.5
    out = tmp_path / "out"
    # no --config: the run's own config.json (with its data directory) is used
    done = _export(workdir, "--stage=prune_1", "--format=hf", f"--out={out}", "--max_shard_size=100KB")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "model.safetensors.index.json").is_file() and (out / "tokenizer.json").is_file()
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    from jaxprune.models import import_hf
    params, cfg = import_hf.load_hf(out)  # the exported weights, as jaxprune reads them
    n_prunable = sum(np.asarray(p).size for path, p in _prunable(params))
    zeros = sum(int(np.count_nonzero(np.asarray(p) == 0)) for path, p in _prunable(params))
    assert zeros == n_prunable // 2  # exactly the stage's 50 %
    text = "The old man looked at the sea and said nothing for a long time."
    ids = tok(text)["input_ids"]
    import jax.numpy as jnp

    from jaxprune.models import Transformer
    ours = np.asarray(Transformer(cfg).apply({"params": params}, jnp.asarray([ids])))
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits.numpy()
    assert np.abs(ours - theirs).max() <= 1e-4


def _prunable(params):
    from jaxprune.models.trees import flatten
    for key, leaf in flatten(params).items():
        if ("/attn/" in key or "/mlp/" in key) and key.endswith("kernel"):
            yield key, leaf


def test_export_bad_input_exits_2_with_one_line(run, tmp_path):
    config, workdir, _ = run
    cases = {
        ("--stage=prune_9", "--format=hf"): "has no stage 'prune_9'",
        ("--stage=prune_1", "--format=gguf", "--dtype=q4_k"): "GGUF dtype must be one of f32, f16, bf16, q8_0",
        ("--stage=dense", "--format=compressed"): "--format=compressed",
    }
    for args, message in cases.items():
        out = tmp_path / "x"
        r = _export(workdir, *args, f"--out={out}")
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.returncode == 2 and lines and lines[-1].startswith("error: ") and message in lines[-1], r.stderr
        assert "Traceback" not in r.stderr and not out.exists()
    r = _export(tmp_path / "nothing", "--stage=dense", "--format=hf", f"--out={tmp_path / 'y'}")
    assert r.returncode == 2 and "holds no jaxprune run" in r.stderr


def test_main_refuses_a_damaged_sharded_checkpoint_before_compute(hf_dir, tmp_path, data_dir, shared_tokenizer):
    import shutil
    d = tmp_path / "ck"
    shutil.copytree(hf_dir, d)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    (d / shard).unlink()
    work = tmp_path / "work"
    r = subprocess.run([sys.executable, "-m", "jaxprune.main", "--config=tests/tiny_config.py", f"--workdir={work}",
                        f"--config.data.data_dir={data_dir}", f"--config.model.init_path={d}",
                        "--config.model.init=hf", "--config.model.preset=auto", "--config.model.vocab_size=512"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and f"missing shard {shard}" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (work / "config.json").exists()
