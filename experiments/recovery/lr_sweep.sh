#!/usr/bin/env bash
# Learning-rate sweep for the SmolLM2 recovery arms (issue 16), chosen on books VALIDATION only (never a test set):
# one-shot SparseGPT 50 %, then 8 CE steps (one iterative stage's budget: 8 x 8 x 256 = 16,384 tokens), no control,
# books validation perplexity only. One run per learning rate; each is resumable (rerun the script).
# Usage: bash experiments/recovery/lr_sweep.sh [LR ...]    (default: 5e-5 1e-4 2e-4 5e-4 1e-3)
# Results: runs/smollm2_lr/lr_<LR>/results.jsonl; summary: python experiments/recovery/lr_sweep.py runs/smollm2_lr
set -euo pipefail
export JAXPRUNE_DATA_DIR=${JAXPRUNE_DATA_DIR:-../shared/data}
lrs=("$@"); [ ${#lrs[@]} -gt 0 ] || lrs=(5e-5 1e-4 2e-4 5e-4 1e-3)
for lr in "${lrs[@]}"; do
  python -m jaxprune.main --config=configs/smollm2_lambada.py:oneshot=sparsegpt,ce --workdir="runs/smollm2_lr/lr_$lr" \
    --config.finetune.lr="$lr" --config.finetune.steps=8 --config.finetune.control=False \
    --config.eval.tasks="('heldout',)" --progress=false
done
