"""Training loop: loss falls on real text, checkpoints round-trip, kill -9 resumes bit-identically."""

import json
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ROOT

from jaxprune import experiment
from jaxprune.training.checkpoint import CheckpointError, Checkpointer, abstract_like
from jaxprune.training.state import create_state
from jaxprune.training.step import make_optimizer, make_train_step


def test_heldout_loss_falls_on_real_text(make_config, tmp_path):
    exp = experiment.Experiment(make_config(**{"pruning.rates": ()}), tmp_path, progress=False)
    stage = experiment.plan(exp.config)[0]
    before = exp.evaluate(exp._init_dense().params)["heldout_loss"]
    rows = exp.run()
    after = rows[0]["metrics"]["heldout_loss"]
    assert before > 6.0  # about log(512) at initialisation
    assert after < before - 0.7  # 40 steps of 8 x 64 tokens on the novels
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if l["phase"] == "dense"] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert all(l["tokens_per_s"] > 0 for l in lines)
    assert stage.name == "dense"


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    params = {"a": {"kernel": jnp.arange(12.0).reshape(4, 3)}, "b": {"bias": jnp.ones(3)}}
    masks = {"a": {"kernel": jnp.arange(12).reshape(4, 3) % 2 == 0}, "b": {"bias": None}}
    tx = optax.adamw(1e-3)
    state = create_state(params, tx, masks, seed=3).replace(step=jnp.int32(7))
    ckpt = Checkpointer(tmp_path / "ck")
    ckpt.save(7, state, {"digest": "abc"})
    restored, meta = ckpt.restore(7, abstract_like(state), expect_meta={"digest": "abc"})
    assert meta["digest"] == "abc"
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.dtype == b.dtype
    assert restored.masks["b"]["bias"] is None
    with pytest.raises(CheckpointError, match=r"checkpoint .*ck/7: digest is 'abc', this run expects 'xyz'"):
        ckpt.restore(7, abstract_like(state), expect_meta={"digest": "xyz"})
    bigger = create_state({"a": {"kernel": jnp.zeros((5, 3))}, "b": {"bias": jnp.ones(3)}}, tx, None, 0)
    with pytest.raises(CheckpointError, match=r"checkpoint .*ck/7"):
        ckpt.restore(7, abstract_like(bigger))


def test_grad_accumulation_matches_full_batch():
    from jaxprune.models import build_model, init_params, model_config_from_preset
    from jaxprune.config import default_config

    model = build_model(model_config_from_preset("femto"))
    params, _ = init_params(model, jax.random.key(0))
    phase = default_config().pretrain
    tx = make_optimizer(phase)
    batch = jax.random.randint(jax.random.key(1), (8, 17), 0, 512)
    full = jax.jit(make_train_step(model.apply, tx, 1))(create_state(params, tx, None, 0), batch)
    accum = jax.jit(make_train_step(model.apply, tx, 4))(create_state(params, tx, None, 0), batch)
    np.testing.assert_allclose(full[1]["loss"], accum[1]["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(full[0].params), jax.tree.leaves(accum[0].params)):
        np.testing.assert_allclose(a, b, atol=2e-6)


def _main(workdir, data_dir, tokenizer, cache):
    return [sys.executable, "-m", "jaxprune.main", "--config=tests/tiny_config.py", f"--workdir={workdir}",
            f"--config.data.data_dir={data_dir}", f"--config.data.tokenizer={tokenizer}",
            f"--config.data.cache_dir={cache}", "--noprogress"]


def _kill_when(path, proc, timeout=300):
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc={proc.returncode}) before {path} appeared")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _final_params(workdir, config):
    exp = experiment.Experiment(config, workdir, progress=False)
    stage = experiment.plan(config)[-1]
    state = experiment.final_state(workdir / stage.name, exp._abstract_state(stage, stage.kind == "pruned"))
    return jax.device_get(state.params), jax.device_get(state.masks)


def test_kill_9_and_rerun_is_bit_identical(make_config, data_dir, shared_tokenizer, token_cache, tmp_path):
    """SIGKILL once in pretraining and once in a pruning stage's fine-tuning; the rerun of the same
    command ends with the same params, masks and results as an uninterrupted run."""
    args = (data_dir, shared_tokenizer, token_cache)
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_main(ref, *args), check=True, cwd=ROOT, capture_output=True, timeout=600)

    proc = subprocess.Popen(_main(killed, *args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(killed / "dense" / "checkpoints" / "20", proc)
    proc = subprocess.Popen(_main(killed, *args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(killed / "prune_1" / "checkpoints" / "5", proc)
    assert not (killed / "prune_2").exists()
    subprocess.run(_main(killed, *args), check=True, cwd=ROOT, capture_output=True, timeout=600)

    def rows(w):
        out = [json.loads(l) for l in (w / "results.jsonl").read_text().splitlines()]
        for r in out:
            r.pop("wall_time_s")
            r.pop("prune_seconds", None)  # timings differ between runs
        return out

    assert [r["stage"] for r in rows(ref)] == ["dense", "prune_1", "control_1", "prune_2", "control_2"]
    assert rows(killed) == rows(ref)
    config = make_config()
    (p_ref, m_ref), (p_kill, m_kill) = _final_params(ref, config), _final_params(killed, config)
    for a, b in zip(jax.tree.leaves((p_ref, m_ref)), jax.tree.leaves((p_kill, m_kill))):
        np.testing.assert_array_equal(a, b)
