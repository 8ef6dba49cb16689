#!/usr/bin/env bash
# Copies the small result files of finished runs into experiments/results/ and renders the reports.
# Usage: bash experiments/collect.sh   (from the repository root, after the runs in experiments/README.md)
set -euo pipefail
out=experiments/results
for run in gpt_lambada ablation_oneshot ablation_no_finetune ablation_sweep_no_finetune smollm2_quick \
    calib_magnitude calib_wanda calib_sparsegpt calib_magnitude_nm calib_wanda_nm calib_sparsegpt_nm \
    calibft_magnitude calibft_wanda calibft_sparsegpt calibft_magnitude_nm calibft_wanda_nm calibft_sparsegpt_nm \
    smollm2_calibft_magnitude smollm2_calibft_wanda smollm2_calibft_sparsegpt \
    smollm2_calibft_magnitude_nm smollm2_calibft_wanda_nm smollm2_calibft_sparsegpt_nm \
    smollm2_iter_sparsegpt_kd smollm2_iter_sparsegpt_ce smollm2_iter_wanda_kd smollm2_iter_wanda_ce \
    smollm2_iter_wanda_ce_lr5e-4 smollm2_iter_magnitude_kd smollm2_iter_magnitude_ce \
    smollm2_iter_wanda_kd_hidden smollm2_iter_wanda_ce_24steps \
    smollm2_oneshot_sparsegpt_kd smollm2_oneshot_sparsegpt_ce smollm2_nofinetune_sparsegpt; do
  [ -f "runs/$run/results.jsonl" ] || continue
  mkdir -p "$out/$run"
  cp "runs/$run/results.jsonl" "runs/$run/config.json" "$out/$run/"
  [ -f "runs/$run/metrics.jsonl" ] && cp "runs/$run/metrics.jsonl" "$out/$run/"
  [ -d "runs/$run/eval" ] && cp -r "runs/$run/eval" "$out/$run/"
  [ -d "runs/$run/test_sets" ] && cp -r "runs/$run/test_sets" "$out/$run/"  # experiments/calibration/evaluate_book_gpt.sh
  [ -d "runs/$run/wikitext2_full" ] && cp -r "runs/$run/wikitext2_full" "$out/$run/"  # the whole WikiText-2 test set
  python -m jaxprune.report "runs/$run" --out "$out/$run" > /dev/null
done
# the paper's comparisons side by side
python -m jaxprune.report runs/gpt_lambada runs/ablation_oneshot --out "$out/iterative_vs_oneshot" > /dev/null
python -m jaxprune.report runs/gpt_lambada runs/ablation_no_finetune --out "$out/finetune_vs_none" > /dev/null
calib=$(ls -d runs/calib_*/ 2>/dev/null || true)
[ -n "$calib" ] && python -m jaxprune.report $calib --out "$out/calibration_book_gpt" > /dev/null
calibft=$(ls -d runs/calibft_*/ 2>/dev/null || true)
[ -n "$calibft" ] && python -m jaxprune.report $calibft --out "$out/calibration_book_gpt_finetuned" > /dev/null
# calibration comparisons as one table each (experiments/calibration/README.md)
book=""; for m in magnitude wanda sparsegpt; do for p in "" _nm; do book="$book runs/calib_$m$p runs/calibft_$m$p"; done; done
python experiments/calibration/table.py $book > "$out/calibration_book_gpt_table.md" || true
smol=""; for m in magnitude wanda sparsegpt; do for p in "" _nm; do
  [ -f "runs/smollm2_calibft_$m$p/results.jsonl" ] && smol="$smol runs/smollm2_calibft_$m$p"; done; done
[ -n "$smol" ] && python experiments/calibration/table.py $smol > "$out/calibration_smollm2_table.md"
# the SmolLM2 recovery arms (experiments/recovery/README.md) as one table
rec=$(ls -d runs/smollm2_iter_*/ runs/smollm2_oneshot_*/ runs/smollm2_nofinetune_*/ 2>/dev/null || true)
[ -n "$rec" ] && python experiments/recovery/table.py $rec > "$out/recovery_smollm2_table.md"
echo "written under $out"
