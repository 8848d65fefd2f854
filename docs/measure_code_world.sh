#!/usr/bin/env bash
# The code notebook's figures (docs/notebooks/code.md), one step after another (24 minutes on 2
# CPU cores, 2026-12-08):
#
#   bash docs/measure_code_world.sh [runs/code]
#
# 1. the table: 100 held-out problems x 64 samples of the shipped code policy; pass@1, majority
#    over outputs, selection by the visible examples, by the hidden tests, oracle (N = 1..64)
# 2. an ORM trained to predict the test outcome (train-orm on 600 training problems x 8, one
#    hard negative a right program), evaluated on the same held-out samples beside the tests
# 3. two RSFT rounds filtered by the tests (rsft --rule checker), then the table again on the
#    last round's policy
set -euo pipefail
OUT=${1:-runs/code}
P=bon_server/embedded/code-policy
PY=${PY:-.venv/bin/python}
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"
step() { echo "== $(date -u +%H:%M:%S) $*"; }

step "table of the shipped policy"
$PY docs/measure_code_world.py --problems 100 -k 64 --out "$OUT/table"

step "ORM training samples"
$PY -m verifier_training sample --task code --policy $P --problems 600 -k 8 --seed 101 \
    --out "$OUT/orm_train.jsonl" --no-progress
step "train-orm"
$PY -m verifier_training train-orm --records "$OUT/orm_train.jsonl" --base $P --out "$OUT/orm" \
    --hard-negatives 1 --epochs 3 --time-budget-min 10 --no-progress
step "evaluate: the ORM beside the visible tests"
$PY -m verifier_training evaluate --task code --records "$OUT/table/samples.jsonl" \
    --orm "$OUT/orm" --partial-checks --out-dir "$OUT/eval" --no-progress

step "RSFT rounds filtered by the tests"
$PY -m verifier_training rsft --task code --policy $P --rule checker --rounds 2 \
    --problems 1000 -k 4 --steps 150 --eval-problems 200 --eval-k 16 --out "$OUT/rsft" \
    --no-progress
step "table of the last round's policy"
$PY docs/measure_code_world.py --policy "$OUT/rsft/round-2" --problems 100 -k 64 \
    --out "$OUT/table-rsft"
step done
