#!/usr/bin/env bash
# SmolLM2-135M: magnitude / Wanda / SparseGPT at 50 % and 2:4, each evaluated right after pruning and after
# 20 fine-tuning steps (configs/smollm2_lambada.py:calibft=...; calibft=magnitude also trains the dense control).
# One run after the other (each needs both CPU cores). From the repository root; rerunning skips finished runs.
set -euo pipefail
export JAXPRUNE_DATA_DIR=${JAXPRUNE_DATA_DIR:-../shared/data}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jaxprune_xla_cache}  # reuse compiles across runs
for v in magnitude sparsegpt wanda sparsegpt_nm wanda_nm magnitude_nm; do
  python -m jaxprune.main --config="configs/smollm2_lambada.py:calibft=$v" --workdir="runs/smollm2_calibft_$v" \
    >> "runs/smollm2_calibft_$v.log" 2>&1
done
python experiments/calibration/table.py runs/smollm2_calibft_{magnitude,magnitude_nm,wanda,wanda_nm,sparsegpt,sparsegpt_nm}
