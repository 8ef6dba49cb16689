"""Every user mistake of issue 17: its documented exit code and one line, before any compute, and a failed
run leaves its workdir unclaimed (no config.json), so the corrected command runs in the same workdir.

In-process cases construct `Experiment` (the checks run there, before tokenisation and compilation);
the CLI cases run `python -m jaxprune.main` and check the exit code, the one `error:` line and that no
traceback is printed. `tests/bad_inputs_matrix.py` runs the wider matrix (>= 60 cases) through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from jaxprune import experiment, report
from jaxprune.config import ConfigError, check_devices
from jaxprune.data.corpus import DataError
from jaxprune.training.checkpoint import CheckpointError


def _unclaimed(workdir: Path) -> bool:
    return not (workdir / "config.json").exists()


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jaxprune.main", *args], capture_output=True, text=True,
                          timeout=180, cwd=ROOT, env=dict(os.environ, **(env or {})))


def _one_error(proc: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    message = [lines[errors[0]]] + [x for x in lines[errors[0] + 1:] if x.startswith("  - ")]  # one per problem
    assert any(text in x for x in message), proc.stderr[-2000:]


# ---------------------------------------------------------------------------
# Mesh and batch sizes
# ---------------------------------------------------------------------------
def test_mesh_needing_more_devices_than_exist(make_config, tmp_path):
    n = __import__("jax").device_count()
    with pytest.raises(ConfigError, match=rf"mesh data/fsdp/tensor=\[{n + 1}, 1, 1\] needs {n + 1} devices; "
                                          rf"{n} are visible"):
        experiment.Experiment(make_config(**{"mesh.data": n + 1}), tmp_path / "run", progress=False)
    assert _unclaimed(tmp_path / "run")


def test_batch_size_not_divisible_by_the_mesh(make_config):
    c = make_config(**{"mesh.data": -1, "pretrain.batch_size": 6, "finetune.batch_size": 8, "eval.batch_size": 3})
    with pytest.raises(ConfigError) as e:
        check_devices(c, 4)
    assert str(e.value).splitlines()[1:] == [
        "  - pretrain.batch_size=6 must be a multiple of the mesh's data x fsdp = 4",
        "  - eval.batch_size=3 must be a multiple of the mesh's data x fsdp = 4"]
    check_devices(make_config(), 4)  # 8 sequences over 4 devices: fine
    with pytest.raises(ConfigError, match=r"needs a multiple of 3 devices; 4 are visible"):
        check_devices(make_config(**{"mesh.tensor": 3}), 4)


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------
def test_vocab_size_smaller_than_the_tokenizer(make_config, shared_tokenizer, tmp_path):
    with pytest.raises(ConfigError, match=rf"model.vocab_size=300 is smaller than the 512 tokens of the tokenizer "
                                          rf"{shared_tokenizer}; set model.vocab_size >= 512"):
        experiment.Experiment(make_config(**{"model.vocab_size": 300}), tmp_path / "run", progress=False)
    assert _unclaimed(tmp_path / "run")


def test_vocab_size_too_small_for_a_new_byte_level_bpe(make_config):
    from jaxprune.config import validate

    with pytest.raises(ConfigError, match=r"model.vocab_size=200: the byte-level BPE trained for it needs at least "
                                          r"257 tokens"):
        validate(make_config(**{"model.vocab_size": 200, "data.tokenizer": ""}))
    validate(make_config(**{"model.vocab_size": 200}))  # an existing tokenizer file: checked against its size


@pytest.mark.parametrize("content", ["{not json", '{"model": {"type": "BPE"}}', ""])
def test_malformed_tokenizer_json(make_config, tmp_path, content):
    bad = tmp_path / "tokenizer.json"
    bad.write_text(content)
    with pytest.raises(DataError, match=rf"tokenizer file '{bad}' is malformed"):
        experiment.Experiment(make_config(**{"data.tokenizer": str(bad)}), tmp_path / "run", progress=False)
    assert _unclaimed(tmp_path / "run")


# ---------------------------------------------------------------------------
# Workdir: results.jsonl, config.json, read-only
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("line,expected", [
    ("garbage", r"results.jsonl: line 2: malformed JSON"),
    ('["a", "list"]', r"results.jsonl: line 2: not a results row"),
    ('{"stage": 3, "metrics": {}}', r"results.jsonl: line 2: not a results row"),
])
def test_garbage_complete_line_in_results(make_config, tmp_path, line, expected):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "results.jsonl").write_text(json.dumps({"stage": "dense", "metrics": {}}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=expected):
        experiment.Experiment(make_config(), workdir, progress=False)
    assert _unclaimed(workdir)


def test_changed_config_on_a_finished_workdir_names_the_changed_keys(make_config, tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    old = make_config()
    (workdir / "config.json").write_text(json.dumps({"digest": experiment.config_digest(old),
                                                     "config": json.loads(old.to_json_best_effort())}))
    with pytest.raises(ConfigError, match=r"holds a run with a different config \(finetune.lr: 0.0003 -> 0.1, "
                                          r"seed: 0 -> 3; digest"):
        experiment.Experiment(make_config(**{"finetune.lr": 0.1, "seed": 3}), workdir, progress=False)
    experiment.Experiment(make_config(**{"eval.max_examples": 7}), workdir, progress=False)  # eval-only: accepted


def test_read_only_workdir(make_config, tmp_path):
    if os.geteuid() == 0:  # root writes through permission bits: use a path on a filesystem nobody can write
        workdir = Path("/proc/jaxprune_test/run")
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        workdir = tmp_path / "ro" / "run"
    with pytest.raises(ConfigError, match=r"is not writable"):
        experiment.Experiment(make_config(), workdir, progress=False)


def test_failed_run_leaves_the_workdir_to_the_corrected_command(make_config, tmp_path):
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError):
        experiment.Experiment(make_config(**{"model.vocab_size": 300}), workdir, progress=False)
    exp = experiment.Experiment(make_config(), workdir, progress=False)  # the corrected command, same workdir
    assert _unclaimed(workdir)  # checks alone claim nothing: config.json is written when the run starts
    exp._claim_workdir()
    assert json.loads((workdir / "config.json").read_text())["digest"] == exp.digest


# ---------------------------------------------------------------------------
# model.init
# ---------------------------------------------------------------------------
def test_init_checkpoint_must_be_a_finished_stage(make_config, tmp_path):
    other = tmp_path / "other"
    (other / "dense" / "checkpoints").mkdir(parents=True)
    overrides = {"model.init": "checkpoint", "model.init_path": str(other / "dense")}
    with pytest.raises(ConfigError, match=r"is not a stage directory of a jaxprune run"):
        experiment.Experiment(make_config(**overrides), tmp_path / "run", progress=False)
    (other / "results.jsonl").write_text("")
    with pytest.raises(ConfigError, match=r"is not finished \(.*has no 'dense' row\)"):
        experiment.Experiment(make_config(**overrides), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"is not a stage directory"):
        experiment.Experiment(make_config(**dict(overrides, **{"model.init_path": str(tmp_path)})),
                              tmp_path / "run", progress=False)
    (other / "results.jsonl").write_text(json.dumps({"stage": "dense", "metrics": {}}) + "\n")
    with pytest.raises(CheckpointError, match=r"dense/checkpoints holds no finished checkpoint"):  # exit 4
        experiment.Experiment(make_config(**overrides), tmp_path / "run", progress=False)
    assert _unclaimed(tmp_path / "run")


def _gguf_bytes(tmp_path: Path, zero_dim: bool = False) -> bytes:
    import gguf

    path = tmp_path / "w.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.ones((0 if zero_dim else 8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.mark.parametrize("case,expected", [
    ("truncated", "is not a readable GGUF file"),
    ("text", "is not a readable GGUF file"),
    ("zero_dim", "has a zero dimension"),
    ("no_magic", "is not a GGUF file"),
])
def test_damaged_gguf_names_the_file(make_config, tmp_path, case, expected):
    data = _gguf_bytes(tmp_path, zero_dim=case == "zero_dim")
    bad = tmp_path / f"{case}.gguf"
    bad.write_bytes({"truncated": data[: len(data) // 2], "text": b"GGUF is a format\n" * 20,
                     "zero_dim": data, "no_magic": b"hello"}[case])
    c = make_config(**{"model.init": "gguf", "model.init_path": str(bad), "model.preset": "llama-pico",
                       "data.tokenizer": "", "pretrain.steps": 0})
    with pytest.raises(DataError, match=rf"'{bad}'.*{expected}"):
        experiment.Experiment(c, tmp_path / "run", progress=False)
    assert _unclaimed(tmp_path / "run")


# ---------------------------------------------------------------------------
# Pruning and data
# ---------------------------------------------------------------------------
def test_pruning_include_matching_no_parameter(make_config, tmp_path):
    with pytest.raises(ConfigError, match=r"pruning.include \('.*/attention/kernel',\) .* matches no parameter; "
                                          r"parameter paths look like"):
        experiment.Experiment(make_config(**{"pruning.include": (".*/attention/kernel",)}), tmp_path / "run",
                              progress=False)
    assert _unclaimed(tmp_path / "run")


def _books(tmp_path: Path, data_dir: Path, splits) -> Path:
    d = tmp_path / "data"
    (d / "books").mkdir(parents=True)
    for f in (data_dir / "books").iterdir():
        if f.suffix == ".txt":
            (d / "books" / f.name).symlink_to(f)
    (d / "books" / "splits.json").write_text(json.dumps(splits))
    return d


@pytest.mark.parametrize("splits,expected", [
    (["a.txt", "b.txt"], r"splits.json: expected a JSON object .*got a list"),
    ({"train": "old_jack.txt", "validation": [], "test": []}, r"splits.json: 'train' must be a list of file names"),
    ({"validation": ["old_jack.txt"]}, r"splits.json: has no 'train' split"),
    ({"train": [], "validation": ["old_jack.txt"]}, r"the 'train' split lists no books"),
])
def test_malformed_books_splits(make_config, data_dir, tmp_path, splits, expected):
    d = _books(tmp_path, data_dir, splits)
    with pytest.raises(DataError, match=expected):
        experiment.Experiment(make_config(**{"data.data_dir": str(d)}), tmp_path / "run", progress=False)
    assert _unclaimed(tmp_path / "run")


@pytest.mark.parametrize("content,expected", [
    ("Once upon a time.\n" * 20 + "\x00" * 100_000, r"line 21: 100000 of 100360 characters are control characters"),
    ("A long line: " + "x" * 20_000 + "\nthe end\n", r"line 1: more than 10000 characters without whitespace"),
])
def test_degenerate_book_is_refused(make_config, tmp_path, content, expected):
    book = tmp_path / "book.txt"
    book.write_text(content)
    c = make_config(**{"data.source": "files", "data.files": (str(book),), "data.tokenizer": ""})
    with pytest.raises(DataError, match=rf"{book}: {expected}"):
        experiment.Experiment(c, tmp_path / "run", progress=False)
    assert _unclaimed(tmp_path / "run")


# ---------------------------------------------------------------------------
# The command line: exit code, one line, no traceback
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("args,code,text", [
    (["--config=tests/tiny_config.py", "--config.pruning.rats=(0.5,)"], 2,
     "--config.pruning.rats: the config has no key 'pruning.rats'; did you mean --config.pruning.rates?"),
    (["--config=tests/no_such_config.py"], 2,
     "config file 'tests/no_such_config.py' could not be loaded: [Errno 2] No such file or directory"),
    (["--config=RAISING"], 2, "raised RuntimeError: broken config"),
    (["--config=tests/tiny_config.py", "--config.seed=abc"], 2, "invalid literal for int()"),
    (["--config=tests/tiny_config.py", "--config.model.init=hf_gpt2", "--config.model.init_path=openai/gpt2-nope",
      "--config.data.tokenizer="], 2, "openai/gpt2-nope"),
    (["--config=tests/tiny_config.py", "--config.pruning.include=('nothing',)"], 2, "matches no parameter"),
])
def test_cli_user_errors_exit_with_one_line(args, code, text, data_dir, shared_tokenizer, token_cache, tmp_path):
    raising = tmp_path / "raising.py"
    raising.write_text("def get_config():\n    raise RuntimeError('broken config')\n")
    args = [a.replace("RAISING", str(raising)) for a in args]
    workdir = tmp_path / "run"
    proc = _cli(*args, f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
                f"--config.data.cache_dir={token_cache}",
                *([f"--config.data.tokenizer={shared_tokenizer}"] if not any("tokenizer" in a for a in args)
                  else []))
    _one_error(proc, code, text)
    assert _unclaimed(workdir)


# ---------------------------------------------------------------------------
# Evaluation-only changes on a finished run, and evaluate -> report
# ---------------------------------------------------------------------------
def test_new_eval_task_on_a_finished_run_is_evaluated_and_reported(make_config, tmp_path, capsys):
    base = {"pretrain.steps": 2, "pruning.rates": (), "checkpoint.every_steps": 2, "eval.heldout_batches": 1}
    workdir = tmp_path / "run"
    rows = experiment.run(make_config(**base), workdir, progress=False)
    assert [r["stage"] for r in rows] == ["dense"] and "wikitext2_ppl" not in rows[0]["metrics"]
    capsys.readouterr()
    more = make_config(**dict(base, **{"eval.tasks": ("heldout", "wikitext2"), "eval.ppl_windows": 2}))
    assert experiment.run(more, workdir, progress=False) == rows  # results.jsonl is never rewritten
    assert "[dense] finished before eval.tasks had wikitext2: evaluating its final checkpoint" in \
        capsys.readouterr().err
    lines = [json.loads(x) for x in (workdir / "eval" / "evaluations.jsonl").read_text().splitlines()]
    assert [(x["stage"], sorted(x["metrics"])) for x in lines] == [
        ("dense", ["wikitext2_loss", "wikitext2_ppl", "wikitext2_ppl_stderr", "wikitext2_tokens",
                   "wikitext2_windows"])]
    assert lines[0]["metrics"]["wikitext2_windows"] == 2
    experiment.run(more, workdir, progress=False)  # nothing missing any more: nothing evaluated
    assert len((workdir / "eval" / "evaluations.jsonl").read_text().splitlines()) == 1
    # a setting that changes finished metrics: named, with the command that re-evaluates
    experiment.run(make_config(**dict(base, **{"eval.heldout_batches": 2})), workdir, progress=False)
    err = capsys.readouterr().err
    assert "note: finished stages were evaluated with other settings: dense (eval.heldout_batches: 1 -> 2)" in err
    assert "python -m jaxprune.evaluate" in err

    path = report.report([workdir], tmp_path / "out")
    text = path.read_text()
    assert "- From `eval/evaluations.jsonl`" in text and "`wikitext2_ppl`" in text
    assert text.count("| wikitext2_ppl |") == 1  # each metric once
    ppl = lines[0]["metrics"]["wikitext2_ppl"]
    assert f"| run | dense | 0.0000 | {rows[0]['nonzero_params']} | 0 |" in text and f"{ppl:.4g}" in text
    csv_head, csv_row = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert csv_head.split(",").count("wikitext2_ppl") == 1
    assert float(csv_row.split(",")[csv_head.split(",").index("wikitext2_ppl")]) == pytest.approx(ppl)
    metrics = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    # warmup (5 steps) is clipped to the phase's 2 steps: the second step's update used lr * 1/2
    assert [m["step"] for m in metrics] == [2] and metrics[0]["lr"] == pytest.approx(3e-3 / 2)
    # TensorBoard: the same training scalars and the stage's final evaluation, at step 2
    scalars = {(step, tag): v for f in sorted((workdir / "tensorboard" / "dense").glob("events.out.tfevents.*"))
               for step, tag, v in _tensorboard_scalars(f)}
    assert {tag for _, tag in scalars} >= {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s",
                                           "eval/heldout_ppl", "eval/heldout_loss"}
    assert scalars[(2, "train/lr")] == pytest.approx(3e-3 / 2)
    assert scalars[(2, "eval/heldout_ppl")] == pytest.approx(rows[0]["metrics"]["heldout_ppl"], rel=1e-6)


def _tensorboard_scalars(path: Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    out, data = [], path.read_bytes()
    pos = 0
    while pos + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
        out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
        pos += 12 + n + 4
    return out


def test_report_merges_evaluations_each_metric_once_with_the_stage_sparsity():
    rows = [{"stage": "prune_1", "kind": "pruned", "sparsity": 0.5, "metrics": {"heldout_ppl": 40.0}},
            {"stage": "dense", "kind": "dense", "sparsity": 0.0, "metrics": {"heldout_ppl": 30.0}}]
    evaluations = [{"stage": "prune_1", "metrics": {"heldout_ppl": 41.0, "lambada_acc": 0.1}},
                   {"stage": "prune_1", "metrics": {"lambada_acc": 0.2}},
                   {"stage": "prune_9", "metrics": {"lambada_acc": 0.9}}]
    merged = report.merge_evaluations(rows, evaluations)
    assert merged[0]["metrics"] == {"heldout_ppl": 40.0, "lambada_acc": 0.2}  # results kept; newest line wins
    assert merged[0]["sparsity"] == 0.5 and merged[0]["evaluated_metrics"] == ["lambada_acc"]
    assert merged[1] == rows[1]


def test_constant_metric_is_not_plotted(tmp_path):
    def row(stage, kind, sp, ppl):
        return {"stage": stage, "kind": kind, "target_sparsity": sp, "sparsity": sp, "nonzero_params": 1,
                "layer_sparsity": {"h_0/mlp/c_fc/kernel": sp}, "cumulative_finetune_steps": 0,
                "metrics": {"heldout_ppl": ppl, "lambada_acc": 0.0}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in (row("dense", "dense", 0.0, 30.0), row("prune_1", "pruned", 0.5, 33.0))))
    report.report([tmp_path / "run"], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["heldout_ppl_vs_sparsity.png",
                                                                       "layer_sparsity.png"]
