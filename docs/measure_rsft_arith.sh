#!/usr/bin/env bash
# The README's arithmetic RSFT table: the checker rule at two learning rates, with its controls,
# on the shipped arith-policy. One job at a time; finished rounds are skipped on a rerun.
# Writes runs/rsft/arith-*/ and runs/post/rsft-arith-*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
P=bon_server/embedded/arith-policy
mkdir -p runs/post
run() { local name=$1; shift; echo "== $name  $(date +%T)"; "$PY" -m verifier_training rsft \
  --policy $P --no-progress "$@" > runs/post/$name.log 2>&1; grep -A8 "^| round" runs/post/$name.log || true; }

# 1. STaR with Countdown's settings (peak lr 5e-4): 3 rounds of 2000 problems x 8
run rsft-arith-checker --rule checker --rounds 3 --out runs/rsft/arith-checker
# 2. one round each from the same round-1 samples: the controls, the step check
R1=(--rounds 1 --reuse-from runs/rsft/arith-checker)
run rsft-arith-reference --rule reference "${R1[@]}" --out runs/rsft/arith-reference
run rsft-arith-random --rule random "${R1[@]}" --out runs/rsft/arith-random
run rsft-arith-checker-steps --rule checker --exact-steps "${R1[@]}" \
  --out runs/rsft/arith-checker-steps
# 3. the same at peak lr 1e-4: 3 rounds of the checker (round 1 from the same samples), controls
run rsft-arith-checker-lr1e-4 --rule checker --lr 1e-4 --rounds 3 \
  --reuse-from runs/rsft/arith-checker --out runs/rsft/arith-checker-lr1e-4
run rsft-arith-reference-lr1e-4 --rule reference --lr 1e-4 "${R1[@]}" \
  --out runs/rsft/arith-reference-lr1e-4
run rsft-arith-random-lr1e-4 --rule random --lr 1e-4 "${R1[@]}" \
  --out runs/rsft/arith-random-lr1e-4
echo "== done $(date +%T)"
