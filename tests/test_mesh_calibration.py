"""Wanda / SparseGPT calibration on a device mesh agrees with one device (8 fake CPU devices).

The device count is fixed when jax is imported, so the checks run in a child process
(tests/mesh_calibration_check.py, which prints one JSON object); this test asserts on it.
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
def report(tmp_path_factory) -> dict:
    # the compilation cache lets the check's lowering of each step for its HLO reuse the step it just ran
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               TF_CPP_MIN_LOG_LEVEL="2", JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    proc = subprocess.run([sys.executable, str(HERE / "mesh_calibration_check.py")], env=env, cwd=HERE.parent,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mesh_calibration_matches_one_device(report):
    assert report["devices"] == 8
    assert sorted(report["meshes"]) == ["1x4x2", "2x2x2", "8x1x1"]
    for name, mesh in report["meshes"].items():
        # 8x1x1 keeps every kernel replicated; the other two shard all 8 prunable kernels
        assert mesh["sharded_kernels"] == (0 if name == "8x1x1" else 8), name
        assert sorted(mesh["methods"]) == (["sparsegpt_nm"] if name == "2x2x2" else []) + [
            "sparsegpt_unstructured", "wanda_unstructured"], name
        for method, m in mesh["methods"].items():
            assert m["masks_identical"], (name, method)
            assert m["sparsity"] == 0.5, (name, method)
            # Wanda never changes a weight; SparseGPT's statistics are summed in another order across the
            # batch shards (float32 rounding), its reconstructed weights agree to rounding
            if method.startswith("wanda"):
                assert m["params_max_diff"] == 0.0, (name, method)
            else:
                assert m["params_max_diff"] < 1e-5, (name, method, m["params_max_diff"])
            assert m["kept_model_shardings"], (name, method)
            assert m["full_gathers"] == [], (name, method, m["full_gathers"])
