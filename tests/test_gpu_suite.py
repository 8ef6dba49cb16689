"""benchmarks/gpu_suite.py --tiny: every section of the GPU suite runs on CPU and reports its figures.

One subprocess (the suite runs its benchmark scripts in-process), toy sizes; no timings are asserted.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {  # section -> RESULT keys it must print
    "train": {"mfu", "train_masked_over_dense"},
    "selection": {"threshold_compile_s_0.2M", "threshold_ms_0.2M", "threshold_speedup_vs_sort_0.2M"},
    "lambada": {"lambada_full_warm_s", "lambada_full_examples_per_s"},
    "calibrated": {"wanda_forward_equivalents", "wanda_prune_s", "sparsegpt_forward_equivalents",
                   "sparsegpt_prune_s"},
    "structured": {"speedup_over_flop_ratio_at_50"},
}


def test_gpu_suite_tiny_reports_every_figure():
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--tiny"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = dict(re.findall(r"^RESULT (\S+)=(\S+)$", proc.stdout, flags=re.M))
    for section, keys in EXPECTED.items():
        assert f"=== {section}:" in proc.stdout
        missing = keys - set(results)
        assert not missing, (section, missing)
    assert all(math.isfinite(float(results[k])) and float(results[k]) > 0 for keys in EXPECTED.values() for k in keys)
    # the table at the end names every section
    table = proc.stdout[proc.stdout.rindex("section"):]
    assert all(re.search(rf"^{s}\s", table, flags=re.M) for s in EXPECTED)
