"""Sharded training, pruning and evaluation agree with one device (8 fake CPU devices).

The device count is fixed when jax is imported, so the checks run in a child process
(tests/sharding_check.py, which prints one JSON object); this test asserts on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(HERE / "sharding_check.py")], env=env, cwd=HERE.parent,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_matches_single_device(report):
    assert report["devices"] == 8
    assert sorted(report["meshes"]) == ["1x4x2", "2x2x2", "8x1x1"]
    for name, m in report["meshes"].items():
        # global, layer-wise, 2:4 and head pruning at 50 %: masks identical to one device's
        assert m["masks_identical"] == [True, True, True, True], name
        assert m["sparsity"][:3] == [0.5, 0.5, 0.5], name
        # one dense train step and one masked fine-tuning step: params, optimizer state, metrics
        assert m["dense_step_diff"] < 1e-4, name
        assert m["masked_step_diff"] < 1e-4, name
        assert abs(m["dense_loss"][0] - m["dense_loss"][1]) < 1e-5, name
        assert m["pruned_weights_zero"], name
        # held-out eval step (summed NLL over 256 tokens) and harness loglikelihoods
        assert m["eval_diff"] < 2e-3, name
        assert m["loglik_diff"] < 1e-4, name
        assert m["loglik_same_greedy_and_counts"], name
        # masks are created sharded like their params; optimizer state mirrors the params
        assert m["masks_born_sharded"], name
        assert m["opt_state_sharded_like_params"], name
        assert m["param_specs"]["h_0/mlp/c_fc/kernel"] == "P('fsdp', 'tensor')", name
        # thresholds come from counts reduced across devices, never from gathered weights
        assert m["full_gathers"] == [], (name, m["full_gathers"])
