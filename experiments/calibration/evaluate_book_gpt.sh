#!/usr/bin/env bash
# WikiText-2 test and books-test perplexity of the book-trained GPT's calibration runs (runs/calib_*, runs/calibft_*),
# evaluated from their final checkpoints: the dense model once, every pruned model, the fine-tuned dense control once.
# Writes runs/<run>/test_sets/eval/{<stage>.md,<stage>.json,evaluations.jsonl}. From the repository root.
set -euo pipefail
export JAXPRUNE_DATA_DIR=${JAXPRUNE_DATA_DIR:-../shared/data}
windows=${WINDOWS:-2048}  # evenly spaced 128-token windows per corpus (0 = the whole test set)
for run in calib_magnitude calib_wanda calib_sparsegpt calib_magnitude_nm calib_wanda_nm calib_sparsegpt_nm \
    calibft_magnitude calibft_wanda calibft_sparsegpt calibft_magnitude_nm calibft_wanda_nm calibft_sparsegpt_nm; do
  variant=${run#calib_}; variant=${run%%_*}=${variant#calibft_}
  case $run in calib_magnitude) stages=dense,prune_1;; calibft_magnitude) stages=prune_1,control_1;; *) stages=prune_1;; esac
  [ -f "runs/$run/test_sets/eval/evaluations.jsonl" ] && continue
  python -m jaxprune.evaluate --config="experiments/ablation.py:$variant" --workdir="runs/$run" --stages=$stages \
    --config.eval.tasks="('wikitext2','books_test')" --config.eval.ppl_windows=$windows --out="runs/$run/test_sets"
done
