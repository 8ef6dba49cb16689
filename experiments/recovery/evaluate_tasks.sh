#!/usr/bin/env bash
# The paper's other tasks on the SmolLM2 recovery arms' saved checkpoints (issue 16): HellaSwag and StoryCloze
# on their first 500 examples, NQ-open / WebQuestions / TriviaQA on their first 200 (greedy generation), zero-shot unless SHOTS is given.
# Usage: bash experiments/recovery/evaluate_tasks.sh RUN CONFIG_ARG STAGES [mc|qa] [SHOTS] [--config.x=y ...]
#   (the overrides the run was started with, if any: the run's config must match)
#   e.g. bash experiments/recovery/evaluate_tasks.sh runs/smollm2_iter_sparsegpt_kd iter=sparsegpt,kd dense,prune_3,prune_5 mc
# Results: RUN/eval/evaluations.jsonl (merged by jaxprune.report and experiments/recovery/table.py) and
# RUN/eval/<stage>.evaluate.<tasks>.{md,json}.
set -euo pipefail
run=$1 arg=$2 stages=$3 which=${4:-mc} shots=${5:-0}
export JAXPRUNE_DATA_DIR=${JAXPRUNE_DATA_DIR:-../shared/data}
if [ "$which" = mc ]; then
  tasks="('hellaswag','storycloze')" n=500
else
  tasks="('nq_open','webquestions','triviaqa')" n=200
fi
python -m jaxprune.evaluate --config="configs/smollm2_lambada.py:$arg" --workdir="$run" --stages="$stages" \
  --config.eval.tasks="$tasks" --config.eval.max_examples=$n --config.eval.shots=$shots "${@:6}"
