"""The pipeline: stage plans, results.jsonl fields, exact sparsities, controls, resume, report."""

import json
import math

import jax
import numpy as np
import pytest

from jaxprune import experiment, report
from jaxprune.sparsity.masks import leaves_with_paths


def test_plan_iterative_interleaves_controls(make_config):
    stages = experiment.plan(make_config(**{"pruning.rates": (0.1, 0.2, 0.3)}))
    assert [(s.name, s.source, s.rate) for s in stages] == [
        ("dense", None, 0.0), ("prune_1", "dense", 0.1), ("control_1", "dense", 0.0),
        ("prune_2", "prune_1", 0.2), ("control_2", "control_1", 0.0),
        ("prune_3", "prune_2", 0.3), ("control_3", "control_2", 0.0)]


def test_plan_without_finetuning_has_no_controls(make_config):
    stages = experiment.plan(make_config(**{"finetune.steps": 0}))
    assert [s.name for s in stages] == ["dense", "prune_1", "prune_2"]


def test_plan_sweep_prunes_dense_each_time(make_config):
    stages = experiment.plan(make_config(**{"pruning.schedule": "sweep", "pruning.rates": (0.2, 0.5, 0.8)}))
    assert [(s.name, s.source, s.index) for s in stages] == [
        ("dense", None, 0), ("prune_1", "dense", 1), ("control_1", "dense", 1), ("prune_2", "dense", 1),
        ("prune_3", "dense", 1)]


def test_plan_gradual_is_one_stage(make_config):
    stages = experiment.plan(make_config(**{"pruning.schedule": "gradual", "pruning.rates": (0.5,)}))
    assert [(s.name, s.gradual) for s in stages] == [("dense", False), ("gradual", True), ("control_1", False)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir, shared_tokenizer, token_cache):
    from conftest import tiny_config

    config = tiny_config(data_dir, shared_tokenizer, token_cache)
    config.eval.before_finetune = True
    workdir = tmp_path_factory.mktemp("run")
    rows = experiment.run(config, workdir, progress=False)
    return config, workdir, rows


def test_results_rows_have_every_field_and_exact_sparsity(finished_run):
    config, workdir, rows = finished_run
    assert [r["stage"] for r in rows] == ["dense", "prune_1", "control_1", "prune_2", "control_2"]
    prunable = rows[0]["prunable_params"]
    assert prunable == 2 * (64 * 192 + 64 * 64 + 64 * 256 + 256 * 64)  # femto: attention + MLP kernels
    for r in rows:
        for key in ("stage", "target_sparsity", "sparsity", "layer_sparsity", "nonzero_params", "finetune_steps",
                    "finetune_tokens", "wall_time_s", "metrics"):
            assert key in r, key
        assert math.isfinite(r["metrics"]["heldout_ppl"])
        expected_zeros = math.floor(r["target_sparsity"] * prunable)
        assert r["sparsity"] == pytest.approx(expected_zeros / prunable, abs=1e-12)
        assert r["nonzero_params"] == r["total_params"] - expected_zeros
    assert rows[1]["finetune_steps"] == 10 and rows[1]["finetune_tokens"] == 10 * 8 * 64
    assert [("prune_seconds" in r) for r in rows] == [False, True, False, True, False]
    assert rows[3]["cumulative_finetune_steps"] == rows[4]["cumulative_finetune_steps"] == 20
    # global magnitude: layers end up at different sparsities, averaging to the target
    layer = rows[3]["layer_sparsity"]
    assert len(set(round(v, 6) for v in layer.values())) > 1


def test_pruned_masks_are_nested_and_weights_exactly_zero(finished_run):
    config, workdir, _ = finished_run
    exp = experiment.Experiment(config, workdir, progress=False)
    states = {}
    for stage in experiment.plan(config)[1:]:
        abstract = exp._abstract_state(stage, masked=stage.kind == "pruned")
        states[stage.name] = jax.device_get(experiment.final_state(workdir / stage.name, abstract))
    m1, m2 = states["prune_1"].masks, states["prune_2"].masks
    for a, b in zip(jax.tree.leaves(m1), jax.tree.leaves(m2)):
        assert not np.any(b & ~a)  # prune_2 only removes more
    flat_p = leaves_with_paths(states["prune_2"].params)
    flat_m = dict(leaves_with_paths(m2))
    for path, p in flat_p:
        if path in flat_m:
            assert np.all(p[~flat_m[path]] == 0.0)
    assert all(m is None for m in jax.tree.leaves(states["control_2"].masks, is_leaf=lambda x: x is None))


def test_before_finetune_metrics_equal_a_run_without_finetuning(finished_run, tmp_path):
    config, workdir, rows = finished_run
    assert [("metrics_before_finetune" in r) for r in rows] == [False, True, False, True, False]
    before = rows[1]["metrics_before_finetune"]
    assert before.keys() == rows[1]["metrics"].keys()
    assert before["heldout_ppl"] != rows[1]["metrics"]["heldout_ppl"]  # fine-tuning changed the model
    # the same dense model pruned to the same rate and not fine-tuned at all
    other = config.copy_and_resolve_references()
    other.model.init, other.model.init_path = "checkpoint", str(workdir / "dense")
    other.pruning.rates, other.finetune.steps = (0.3,), 0
    no_ft = experiment.run(other, tmp_path, progress=False)
    assert no_ft[1]["stage"] == "prune_1" and "metrics_before_finetune" not in no_ft[1]
    assert no_ft[1]["metrics"]["heldout_ppl"] == pytest.approx(before["heldout_ppl"], rel=1e-6)
    table = report.table_rows({"run": rows}, ["heldout_ppl"])
    assert [r["stage"] for r in table] == ["dense", "prune_1@0", "prune_1", "control_1", "prune_2@0", "prune_2",
                                           "control_2"]
    assert table[1]["heldout_ppl"] == before["heldout_ppl"] and table[1]["finetune_steps"] == 0
    assert table[4]["finetune_steps"] == 10 and table[5]["heldout_ppl vs control"] != ""


def test_rerun_of_a_finished_run_changes_nothing(finished_run):
    config, workdir, rows = finished_run
    before = (workdir / "results.jsonl").read_text()
    assert experiment.run(config, workdir, progress=False) == rows
    assert (workdir / "results.jsonl").read_text() == before


def test_changed_config_refuses_the_workdir(finished_run):
    config, workdir, _ = finished_run
    other = config.copy_and_resolve_references()
    other.finetune.lr = 1.0
    with pytest.raises(ValueError, match="holds a run with a different config"):
        experiment.Experiment(other, workdir, progress=False)


def test_report_renders_from_fixture(tmp_path):
    def row(stage, kind, sp, steps, ppl, acc):
        return {"stage": stage, "kind": kind, "target_sparsity": sp, "sparsity": sp,
                "layer_sparsity": {"h_0/attn/c_attn/kernel": sp, "h_0/mlp/c_fc/kernel": sp},
                "nonzero_params": int(1000 * (1 - sp)), "total_params": 1000, "cumulative_finetune_steps": steps,
                "metrics": {"heldout_ppl": ppl, "lambada_acc": acc, "lambada_n": 100}}

    rows = [row("dense", "dense", 0.0, 0, 40.0, 0.2), row("prune_1", "pruned", 0.5, 10, 45.0, 0.15),
            row("control_1", "control", 0.0, 10, 38.0, 0.22)]
    rows[1]["metrics"]["lambada_acc_stderr"] = 0.0357  # shown beside its metric, never as a metric of its own
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    path = report.report([tmp_path / "run"], tmp_path / "out")
    text = path.read_text()
    assert "| run | prune_1 | 0.5000 | 500 | 10 | 45 | +5 | +7 | 0.15 ± 0.0357 | -0.05 | -0.07 |" in text
    assert "| run | dense | 0.0000 | 1000 | 0 | 40 |  |  | 0.2 |  |  |" in text
    assert "stderr_vs_sparsity" not in text
    assert report._stderrs(rows, "lambada_acc") == [0.0, 0.0357, 0.0]  # the error bars drawn: 1 SE, 0 where none
    for png in ("heldout_ppl_vs_sparsity.png", "lambada_acc_vs_sparsity.png", "layer_sparsity.png"):
        assert (tmp_path / "out" / png).stat().st_size > 1000
    csv_lines = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("run,stage,kind,target_sparsity,sparsity")


@pytest.mark.parametrize("variant", [
    "oneshot", "unstructured_oneshot", "no_finetune", "sweep", "sweep_no_finetune", "lr=1e-4", "layerwise", "nm",
    "neuron", "head", "gradual", "random", "calib=wanda", "calib=sparsegpt_nm", "calib=magnitude",
    "calibft=sparsegpt"])
def test_every_ablation_variant_is_a_valid_config(variant, data_dir, tmp_path):
    """Each ablation is one command: its config must pass validation (given the headline's dense run)."""
    import importlib.util

    from conftest import ROOT

    from jaxprune.config import validate

    spec = importlib.util.spec_from_file_location("ablation", ROOT / "experiments" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(variant)
    (tmp_path / "dense" / "checkpoints").mkdir(parents=True)
    (tmp_path / "tokenizer.json").write_text("{}")
    c.model.init_path = str(tmp_path / "dense")
    c.data.tokenizer = str(tmp_path / "tokenizer.json")
    c.data.data_dir = str(data_dir)
    validate(c)
    assert c.model.init == "checkpoint"


def test_unknown_ablation_variant_is_refused():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("ablation", ROOT / "experiments" / "ablation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(ValueError, match="unknown ablation variant 'bogus'"):
        module.get_config("bogus")


def test_evaluate_cli_scores_finished_checkpoints(finished_run, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    config, workdir, rows = finished_run
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "jaxprune.evaluate", "--config=tests/tiny_config.py", f"--workdir={workdir}",
           f"--config.data.data_dir={config.data.data_dir}", f"--config.data.tokenizer={config.data.tokenizer}",
           f"--config.data.cache_dir={config.data.cache_dir}", "--config.eval.tasks=('wikitext2',)",
           "--config.eval.ppl_windows=8", f"--out={tmp_path}"]
    bad = subprocess.run(cmd + ["--stages=dense,prune_9"], cwd=root, capture_output=True, text=True)
    assert bad.returncode != 0 and "no stage 'prune_9'" in bad.stderr
    assert not (tmp_path / "eval").exists()
    ok = subprocess.run(cmd + ["--stages=dense,prune_2"], cwd=root, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "eval" / "evaluations.jsonl").read_text().splitlines()]
    assert [x["stage"] for x in lines] == ["dense", "prune_2"]
    for x, r in zip(lines, (rows[0], rows[3])):  # the restored checkpoints are the evaluated models
        assert x["metrics"]["heldout_ppl"] == pytest.approx(r["metrics"]["heldout_ppl"], rel=1e-6)
        assert x["metrics"]["wikitext2_windows"] == 8
    assert (tmp_path / "eval" / "prune_2.evaluate.wikitext2.md").is_file()


def test_evaluate_names_few_shot_metrics_apart_from_zero_shot_ones():
    from jaxprune.evaluate import few_shot_names
    m = {"heldout_ppl": 50.0, "nq_open_em": 0.1, "nq_open_em_stderr": 0.01, "nq_open_n": 200, "wikitext2_ppl": 30.0,
         "books_test_ppl": 40.0}
    assert few_shot_names(m, ["nq_open", "wikitext2", "books_test"], 5) == {
        "heldout_ppl": 50.0, "nq_open_5shot_em": 0.1, "nq_open_5shot_em_stderr": 0.01, "nq_open_5shot_n": 200,
        "wikitext2_ppl": 30.0, "books_test_ppl": 40.0}
    assert few_shot_names(m, ["nq_open"], 0) == m


@pytest.mark.parametrize("variant", ["iter=sparsegpt", "iter=wanda,kd", "iter=magnitude,ce+kd",
                                     "oneshot=sparsegpt,kd", "nofinetune=wanda", "gpu=sparsegpt,ce+kd"])
def test_smollm2_recovery_variants_are_valid_configs(variant, data_dir, tmp_path):
    """The real-LM recovery arms are one command each; iterative and one-shot get the same fine-tune tokens."""
    import importlib.util

    from conftest import ROOT

    from jaxprune.config import validate

    spec = importlib.util.spec_from_file_location("smollm2", ROOT / "configs" / "smollm2_lambada.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(variant)
    (tmp_path / "m.gguf").write_bytes(b"GGUF")  # validation only checks that the file is there
    c.model.init_path = str(tmp_path / "m.gguf")
    c.data.data_dir = str(data_dir)
    validate(c)
    tokens = c.finetune.steps * c.finetune.batch_size * c.model.max_len * len(c.pruning.rates)
    if variant.startswith(("iter", "oneshot")):
        assert tokens == module.CPU_STEPS * 5 * 8 * 256 <= 1_000_000
    if variant.startswith("gpu"):
        assert tokens <= 50_000_000
    assert c.finetune.control == (c.finetune.loss != "kd")  # a kd control drifts on float noise: none is trained
