"""Time to prune SmolLM2-135M to 50 % / 2:4 by magnitude, Wanda and SparseGPT, measured in one run.

    python scripts/fetch_smollm2.py
    JAXPRUNE_DATA_DIR=../shared/data python benchmarks/prune_time.py [--calibration-samples 128]

Uses the pipeline's own pruning (`Experiment.prune`) with configs/smollm2_lambada.py:calibft=METHOD[_nm]
(context 256; Wanda and SparseGPT calibrate block by block on the calibration windows). Each time is one
call from the dense model, compile included, on whatever machine runs it; the printed ratios to
magnitude are the comparable numbers. Checks that every result is exactly 50 % sparse.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import jax

from jaxprune import sparsity
from jaxprune.experiment import Experiment
from jaxprune.models import load_pretrained

ROOT = Path(__file__).resolve().parents[1]


def smollm2_config(variant: str, samples: int, cache: str):
    spec = importlib.util.spec_from_file_location("smollm2_config", ROOT / "configs" / "smollm2_lambada.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(f"calibft={variant}")
    c.pruning.calibration_samples = samples
    c.data.cache_dir = cache
    c.eval.tasks = ("heldout",)
    return c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calibration-samples", type=int, default=128)
    ap.add_argument("--variants", nargs="+", default=["magnitude", "wanda", "sparsegpt", "magnitude_nm", "wanda_nm",
                                                      "sparsegpt_nm"])
    args = ap.parse_args()
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        params = masks = None
        for v in args.variants:
            exp = Experiment(smollm2_config(v, args.calibration_samples, f"{tmp}/cache"), f"{tmp}/{v}",
                             progress=False, read_only=True)
            if params is None:
                params = jax.device_put(load_pretrained(exp.config, exp.model_cfg), exp.param_sh)
                pr = exp.config.pruning
                masks = jax.jit(lambda p: sparsity.create_masks(p, pr.include, pr.exclude))(params)
            rng = jax.random.key_data(jax.random.key(0))
            t0 = time.perf_counter()
            _, new_masks = jax.block_until_ready(exp.prune(params, masks, 0.5, rng))
            times[v] = time.perf_counter() - t0
            kept, total = sparsity.count_masks(new_masks)
            assert total - int(kept) == total // 2, (v, int(kept), total)
            print(f"{v:14s} {times[v]:8.1f} s  sparsity {1 - int(kept) / total:.6f}", flush=True)
    for v, t in times.items():
        base = times.get("magnitude_nm" if v.endswith("_nm") else "magnitude")
        if base:
            print(f"RESULT {v}_over_magnitude={t / base:.2f}")


if __name__ == "__main__":
    main()
