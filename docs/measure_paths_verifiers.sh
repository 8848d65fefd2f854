#!/usr/bin/env bash
# The paths world's ceilings and verifiers, on the shipped policy, one job at a time (about
# 25 minutes on the 2-core machine). Figures in the README's "Graph paths" section.
#   bash docs/measure_paths_verifiers.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
P=bon_server/embedded/paths-policy
V=${1:-runs/paths/v}
py=.venv/bin/python
mkdir -p "$V"
$py -m verifier_training sample --policy $P --problems 2000 --seed 101 -k 8 --out $V/train_samples.jsonl --no-progress
$py -m verifier_training sample --policy $P --problems 500 --seed 1234 -k 64 --out $V/eval_samples.jsonl --no-progress
$py -m verifier_training.research ceilings --records $V/eval_samples.jsonl --policy $P
$py -m verifier_training label-steps --method exact --records $V/train_samples.jsonl --out $V/train_labels.jsonl
$py -m verifier_training label-steps --method exact --records $V/eval_samples.jsonl --out $V/eval_labels.jsonl --max-records 2000
$py -m verifier_training train-orm --records $V/train_samples.jsonl --out $V/orm --init $P --hard-negatives 1 --epochs 3 --time-budget-min 12 --no-progress
$py -m verifier_training train-prm --labels $V/train_labels.jsonl --out $V/prm --init $P --epochs 3 --time-budget-min 12 --no-progress
$py -m verifier_training evaluate --records $V/eval_samples.jsonl --orm $V/orm --prm $V/prm --labels $V/eval_labels.jsonl --out-dir $V/eval --no-progress
