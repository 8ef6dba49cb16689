"""Reliability under faults: preemption, kill -9, damaged checkpoints, bad data, two runs on one workdir,
divergence, empty layers, and loading without executing code.

In-process tests use a toy TrainState (no model, no compile); the end-to-end ones run
`python -m jaxprune.main` on the tiny config in subprocesses that share one persistent
compilation cache, so each run after the first costs seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ROOT

from jaxprune import experiment
from jaxprune import workdir as wd
from jaxprune.data.corpus import DataError
from jaxprune.jsonl import append_jsonl, repair_jsonl
from jaxprune.training.checkpoint import (CheckpointCorrupt, CheckpointMismatch, Checkpointer, abstract_like)
from jaxprune.training.loop import Phase, Preempted, TrainingDiverged, final_state, run_phase
from jaxprune.training.state import create_state


# ---------------------------------------------------------------------------
# Toy phase: params w += batch each step; loss = step, or NaN where asked
# ---------------------------------------------------------------------------
def _toy_state(shape=(4, 3)):
    params = {"a": {"kernel": jnp.zeros(shape)}, "b": {"bias": jnp.ones(3)}}
    masks = {"a": {"kernel": jnp.ones(shape, bool)}, "b": {"bias": None}}
    return create_state(params, optax.sgd(0.1), masks, seed=0)


def _toy_phase(tmp: Path, steps: int = 12, nan_at: int | None = None, sigterm_at: int | None = None,
               digest: str = "d1") -> Phase:
    def train_step(state, batch):
        step = int(state.step)
        if sigterm_at is not None and step + 1 == sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives in the middle of this step
        loss = jnp.float32(np.nan if nan_at is not None and step + 1 >= nan_at else step)
        params = jax.tree.map(lambda p: p + batch, state.params)
        return state.replace(step=state.step + 1, params=params), {"loss": loss, "grad_norm": jnp.float32(1)}

    return Phase(name="toy", directory=tmp / "toy", steps=steps, train_step=train_step,
                 batch_at=lambda s: jnp.float32(s), tokens_per_step=1, metrics_file=tmp / "metrics.jsonl",
                 log_every=1, checkpoint_every=5, max_to_keep=3, meta={"digest": digest}, progress=False)


def _kernel_after(steps: int) -> float:
    return float(sum(range(steps)))  # w = sum of the batches 0..steps-1


def _tree_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ---------------------------------------------------------------------------
# 1. Preemption (SIGTERM)
# ---------------------------------------------------------------------------
def test_sigterm_finishes_the_step_saves_and_resumes_identically(tmp_path):
    with pytest.raises(Preempted, match=r"toy: stopped by SIGTERM after step 7; saved the checkpoint .*toy/"
                                        r"checkpoints/7\. Rerun the same command to resume\."):
        run_phase(_toy_phase(tmp_path, sigterm_at=7), _toy_state)
    ckpt = Checkpointer(tmp_path / "toy" / "checkpoints")
    assert ckpt.all_steps() == [5, 7]
    state, meta = ckpt.restore(7, abstract_like(_toy_state()))
    assert meta["step"] == 7 and int(state.step) == 7
    np.testing.assert_array_equal(state.params["a"]["kernel"], _kernel_after(7))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again

    resumed = run_phase(_toy_phase(tmp_path), _toy_state)
    whole = run_phase(_toy_phase(tmp_path / "ref"), _toy_state)
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(whole)):
        np.testing.assert_array_equal(a, b)
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 13))  # stopped exactly after a saved step: nothing redone


# ---------------------------------------------------------------------------
# 2. Atomic JSONL appends and repair of a cut-off last line
# ---------------------------------------------------------------------------
def test_partial_last_line_is_cut_off_with_a_warning(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    append_jsonl(path, {"stage": "dense"})
    with open(path, "ab") as f:
        f.write(b'{"stage": "prune_1", "kind')  # a kill in the middle of an append
    assert [r["stage"] for r in experiment.read_results(tmp_path)] == ["dense"]  # read-only: ignored
    assert "ignoring a partial last line" in capsys.readouterr().err
    assert path.read_bytes().endswith(b'"kind')
    assert [r["stage"] for r in experiment.read_results(tmp_path, repair=True)] == ["dense"]
    assert f"{path}: removed a partial last line (26 bytes)" in capsys.readouterr().err
    assert path.read_text() == '{"stage": "dense"}\n'
    with open(path, "ab") as f:
        f.write(b'{"stage": "x"')
    append_jsonl(path, {"stage": "prune_1"})  # repairs before appending
    assert path.read_text() == '{"stage": "dense"}\n{"stage": "prune_1"}\n'
    assert repair_jsonl(path) == 0
    path.write_text('{"stage": "dense"}\n{bad\n{"stage": "prune_1"}\n')
    with pytest.raises(ValueError, match=r"results.jsonl: line 2: malformed JSON"):
        experiment.read_results(tmp_path, repair=True)


# ---------------------------------------------------------------------------
# 3. Damaged or foreign checkpoints
# ---------------------------------------------------------------------------
def _saved_phase(tmp_path: Path) -> Checkpointer:
    """A toy phase stopped after step 12 with checkpoints 5, 10 and 12."""
    run_phase(_toy_phase(tmp_path, steps=12), _toy_state)
    ckpt = Checkpointer(tmp_path / "toy" / "checkpoints", max_to_keep=3)
    assert ckpt.all_steps() == [5, 10, 12]
    return ckpt


def _largest_file(path: Path) -> Path:
    return max((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "remove_state", "remove_meta"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_intact_one(tmp_path, damage, capsys):
    ckpt = _saved_phase(tmp_path)
    step_dir = tmp_path / "toy" / "checkpoints" / "12"
    if damage == "truncate":
        f = _largest_file(step_dir / "state")
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "flip_byte":
        f = _largest_file(step_dir / "state")
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    else:
        shutil.rmtree(step_dir / ("state" if damage == "remove_state" else "meta"))
    abstract = abstract_like(_toy_state())
    with pytest.raises(CheckpointCorrupt, match=r"checkpoint .*toy/checkpoints/12: "):
        ckpt.restore(12, abstract, expect_meta={"digest": "d1", "phase": "toy"})

    state, meta = ckpt.restore_latest(abstract, expect_meta={"digest": "d1", "phase": "toy"})
    assert meta["step"] == 10 and int(state.step) == 10
    np.testing.assert_array_equal(state.params["a"]["kernel"], _kernel_after(10))
    err = capsys.readouterr().err
    assert "checkpoints/12" in err and "resuming from the intact step 10 instead" in err
    assert ckpt.all_steps() == [5, 10]
    assert [p.name.split("-")[0] for p in (tmp_path / "toy" / "damaged_checkpoints").iterdir()] == ["12"]

    # the phase resumes from 10 and ends where an undamaged run ends
    final = run_phase(_toy_phase(tmp_path, steps=12), _toy_state)
    np.testing.assert_array_equal(final.params["a"]["kernel"], _kernel_after(12))
    assert Checkpointer(tmp_path / "toy" / "checkpoints").all_steps() == [5, 10, 12]


def test_foreign_or_reshaped_checkpoint_stops_without_writing(tmp_path):
    ckpt = _saved_phase(tmp_path)
    before = _tree_files(tmp_path)
    with pytest.raises(CheckpointMismatch, match=r"checkpoint .*toy/checkpoints/12: digest is 'd1', this run "
                                                 r"expects 'other'"):
        run_phase(_toy_phase(tmp_path, steps=20, digest="other"), _toy_state)
    with pytest.raises(CheckpointMismatch, match=re.escape(
            "checkpoints/12 was saved for another model shape: array .params['a']['kernel'] is float32[4, 3] "
            "there, float32[5, 3] in this model")):
        run_phase(_toy_phase(tmp_path, steps=20), lambda: _toy_state((5, 3)))
    assert _tree_files(tmp_path) == before
    # a damaged latest step whose earlier step belongs to another config: no fallback either
    shutil.rmtree(tmp_path / "toy" / "checkpoints" / "12" / "meta")
    before = _tree_files(tmp_path)
    with pytest.raises(CheckpointMismatch, match=r"checkpoints/10: digest is 'd1', this run expects 'other'"):
        ckpt.restore_latest(abstract_like(_toy_state()), expect_meta={"digest": "other", "phase": "toy"})
    assert _tree_files(tmp_path) == before


def test_no_intact_checkpoint_stops_without_writing(tmp_path):
    run_phase(_toy_phase(tmp_path, steps=5), _toy_state)
    shutil.rmtree(tmp_path / "toy" / "checkpoints" / "5" / "state")
    before = _tree_files(tmp_path)
    with pytest.raises(CheckpointCorrupt, match=r"no intact checkpoint to resume from:\n  checkpoint .*/5: state "
                                                r"files unreadable"):
        run_phase(_toy_phase(tmp_path, steps=12), _toy_state)
    assert _tree_files(tmp_path) == before


# ---------------------------------------------------------------------------
# 4. Bad data: one error naming file and line, from Experiment's constructor
# ---------------------------------------------------------------------------
def _data_copy(src: Path, dst: Path) -> Path:
    """A data directory whose files are symlinks to the real ones (replace one to break it)."""
    for sub in ("books", "lambada", "storycloze"):
        (dst / sub).mkdir(parents=True)
        for f in (src / sub).iterdir():
            (dst / sub / f.name).symlink_to(f)
    return dst


@pytest.mark.parametrize("case,expected", [
    ("lambada_json", r"lambada_test.jsonl: line 2: malformed JSON"),
    ("lambada_empty", r"lambada_test.jsonl: file is empty"),
    ("lambada_utf8", r"lambada_test.jsonl: line 2: not valid UTF-8"),
    ("storycloze_columns", r"cloze_test_test__spring2016.csv: line 1: missing columns \['AnswerRightEnding'\]"),
    ("train_utf8", r"train.txt: line 3: not valid UTF-8"),
])
def test_bad_data_fails_before_any_compute(make_config, data_dir, tmp_path, case, expected):
    d = _data_copy(data_dir, tmp_path / "data")
    tasks = ("heldout", "lambada", "storycloze")
    overrides = {"data.data_dir": str(d), "eval.tasks": tasks}
    if case.startswith("lambada"):
        f = d / "lambada" / "lambada_test.jsonl"
        f.unlink()
        f.write_bytes({"lambada_json": b'{"text": "a b"}\n{"text": "a b"\n',
                       "lambada_empty": b"",
                       "lambada_utf8": b'{"text": "a b"}\n{"text": "a \xff b"}\n'}[case])
    elif case == "storycloze_columns":
        f = d / "storycloze" / "cloze_test_test__spring2016.csv"
        lines = (data_dir / "storycloze" / f.name).read_text().splitlines()
        f.unlink()
        f.write_text("\n".join(",".join(line.split(",")[:-1]) for line in lines[:3]) + "\n")
    else:
        train = tmp_path / "train.txt"
        train.write_bytes(b"one\ntwo\nthree \xc3\x28\n")
        overrides.update({"data.source": "files", "data.files": (str(train),), "eval.tasks": ("heldout",)})
    workdir = tmp_path / "run"
    with pytest.raises(DataError, match=expected):
        experiment.Experiment(make_config(**overrides), workdir, progress=False)
    assert not workdir.exists()  # no checkpoint, no results, no config.json: the workdir stays unclaimed


# ---------------------------------------------------------------------------
# 5. One run per workdir
# ---------------------------------------------------------------------------
def test_workdir_lock_refuses_live_and_foreign_owners_and_takes_over_stale_ones(tmp_path, capsys):
    lock = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from jaxprune import workdir; "
                               "workdir.acquire(sys.argv[1]); print('locked', flush=True); time.sleep(600)",
                               str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert json.loads(lock.read_text()) == {"host": socket.gethostname(), "pid": holder.pid}
        with pytest.raises(wd.WorkdirLocked, match=rf"is in use by another run \(pid {holder.pid} on this host"):
            wd.acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert wd.acquire(tmp_path) is True  # the holder died: its lock is stale
    assert f"{lock} was left by pid {holder.pid}, which is no longer running; taking it over" in \
        capsys.readouterr().err
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert wd.acquire(tmp_path) is False  # ours already
    wd.release(tmp_path)
    assert not lock.exists()

    lock.write_text(json.dumps({"host": "tpu-vm-7", "pid": 4242}))
    with pytest.raises(wd.WorkdirLocked, match=r"in use by pid 4242 on host 'tpu-vm-7'"):
        wd.acquire(tmp_path)
    assert json.loads(lock.read_text()) == {"host": "tpu-vm-7", "pid": 4242}


# ---------------------------------------------------------------------------
# 6. Numerics: divergence keeps the last good checkpoint; empty layers are refused
# ---------------------------------------------------------------------------
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"toy: loss is nan at step 7; stopped without saving, the last good "
                                               r"checkpoint of this phase is step 5 in .*toy/checkpoints"):
        run_phase(_toy_phase(tmp_path, nan_at=7), _toy_state)
    ckpt = Checkpointer(tmp_path / "toy" / "checkpoints")
    assert ckpt.all_steps() == [5]
    state, _ = ckpt.restore(5, abstract_like(_toy_state()))
    np.testing.assert_array_equal(state.params["a"]["kernel"], _kernel_after(5))


def test_pruning_that_empties_a_layer_is_refused():
    masks = {"h_0": {"attn": {"kernel": jnp.array([[True, False]])}, "ln": {"scale": None}},
             "h_1": {"attn": {"kernel": jnp.zeros((2, 2), bool)}, "mlp": {"kernel": jnp.zeros((3,), bool)}}}
    with pytest.raises(experiment.PruningError, match=re.escape(
            "stage prune_2 (rate 0.9) leaves no weights in h_1/attn/kernel, h_1/mlp/kernel")):
        experiment.check_no_empty_layers(masks, "stage prune_2 (rate 0.9)")
    experiment.check_no_empty_layers({"a": jnp.array([False, True]), "b": None}, "ok")


# ---------------------------------------------------------------------------
# 7. Nothing loaded is executed or unpickled
# ---------------------------------------------------------------------------
UNSAFE = {
    "pickle": r"\bimport\s+(c?pickle|dill|cloudpickle|joblib)\b|\b(c?pickle|dill|cloudpickle|joblib)\.loads?\(",
    "torch.load": r"\btorch\.load\(",
    "allow_pickle=True": r"allow_pickle\s*=\s*True",
    "eval(": r"(?<![\w.])eval\(",
    "exec(": r"(?<![\w.])exec\(",
    "unsafe yaml": r"\byaml\.(unsafe_)?load\(",
    "np.load without allow_pickle=False": r"\bnp\.load\((?![^)]*allow_pickle\s*=\s*False)",
}


def test_package_never_unpickles_or_executes_what_it_loads():
    found = []
    for path in sorted((ROOT / "jaxprune").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            for name, pattern in UNSAFE.items():
                if re.search(pattern, code):
                    found.append(f"{path.relative_to(ROOT)}:{n}: {name}: {line.strip()}")
    assert found == []


# ---------------------------------------------------------------------------
# End to end: python -m jaxprune.main under SIGTERM, kill -9, a cut-off results line, a stale lock,
# a second run, and divergence
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli(tmp_path_factory, data_dir, shared_tokenizer, token_cache):
    """cli(workdir, *overrides) -> the command; env shares a persistent compilation cache."""
    cache = tmp_path_factory.mktemp("jax_cache")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

    def cmd(workdir, *overrides):
        return [sys.executable, "-m", "jaxprune.main", "--config=tests/tiny_config.py", f"--workdir={workdir}",
                f"--config.data.data_dir={data_dir}", f"--config.data.tokenizer={shared_tokenizer}",
                f"--config.data.cache_dir={token_cache}", "--noprogress", *overrides]
    cmd.env = env
    return cmd


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run ended (rc={proc.returncode}) before {path} appeared: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.02)


def _rows(workdir: Path) -> list[dict]:
    rows = [json.loads(l) for l in (workdir / "results.jsonl").read_text().splitlines()]
    for r in rows:
        r.pop("wall_time_s")
        r.pop("prune_seconds", None)  # timings differ between runs
    return rows


def _final_leaves(workdir: Path, config) -> list[np.ndarray]:
    exp = experiment.Experiment(config, workdir, progress=False)
    out = []
    for stage in experiment.plan(config):
        state = final_state(workdir / stage.name, exp._abstract_state(stage, stage.kind == "pruned"))
        out += [np.asarray(x) for x in jax.tree.leaves((state.params, state.masks))]
    return out


def test_faults_end_to_end_resume_bit_identically(cli, make_config, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    # A run on a workdir in use is refused, naming the owner, and writes nothing.
    ref.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from jaxprune import workdir; "
                               "workdir.acquire(sys.argv[1]); print('locked', flush=True); time.sleep(600)",
                               str(ref)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        refused = subprocess.run(cli(ref), cwd=ROOT, env=cli.env, capture_output=True, text=True, timeout=600)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 3, refused.stderr
    assert f"error: {ref} is in use by another run (pid {holder.pid} on this host" in refused.stderr
    assert sorted(p.name for p in ref.iterdir()) == [".lock"]
    # ... and once its owner is gone, the lock is stale: the next run takes it over.
    whole = subprocess.run(cli(ref), cwd=ROOT, env=cli.env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    assert f"{ref / '.lock'} was left by pid {holder.pid}, which is no longer running; taking it over" \
        in whole.stderr
    assert not (ref / ".lock").exists()

    # SIGTERM during pretraining: the step finishes, a checkpoint is saved, exit 143.
    proc = subprocess.Popen(cli(run), cwd=ROOT, env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    _wait_for(run / "dense" / "checkpoints" / "10", proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait() == 143, err
    m = re.search(r"preempted: (\w+): stopped by SIGTERM after step (\d+); saved the checkpoint (\S+)\. Rerun the "
                  r"same command to resume\.", err)
    assert m, err
    assert Path(m.group(3)) == run / m.group(1) / "checkpoints" / m.group(2) and Path(m.group(3)).is_dir()
    assert not (run / ".lock").exists()

    # kill -9 between prune_1's pruning and its fine-tuning; then a cut-off results line and a stale lock.
    proc = subprocess.Popen(cli(run), cwd=ROOT, env=cli.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(run / "prune_1" / "checkpoints", proc)
    proc.kill()
    proc.wait()
    assert (run / ".lock").exists()
    with open(run / "results.jsonl", "ab") as f:
        f.write(b'{"stage": "prune_1", "kind": "pru')
    final = subprocess.run(cli(run), cwd=ROOT, env=cli.env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    assert f"{run / '.lock'} was left by pid {proc.pid}, which is no longer running; taking it over" in final.stderr
    assert "removed a partial last line (33 bytes)" in final.stderr

    assert [r["stage"] for r in _rows(ref)] == ["dense", "prune_1", "control_1", "prune_2", "control_2"]
    assert _rows(run) == _rows(ref)
    for a, b in zip(_final_leaves(ref, make_config()), _final_leaves(run, make_config())):
        np.testing.assert_array_equal(a, b)


def test_divergence_exits_5_and_keeps_the_good_checkpoints(cli, make_config, tmp_path):
    proc = subprocess.run(cli(tmp_path, "--config.finetune.lr=1e30"), cwd=ROOT, env=cli.env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 5, proc.stderr
    assert re.search(r"error: prune_1: loss is (nan|inf) .*at step 5; stopped without saving, the last good "
                     r"checkpoint of this phase is none yet in \S+prune_1/checkpoints", proc.stderr), proc.stderr
    assert [r["stage"] for r in experiment.read_results(tmp_path)] == ["dense"]
    assert Checkpointer(tmp_path / "prune_1" / "checkpoints").all_steps() == []
    assert Checkpointer(tmp_path / "dense" / "checkpoints").all_steps() == [35, 40]
