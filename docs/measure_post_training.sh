#!/usr/bin/env bash
# The README's post-training tables, on Countdown, one job at a time (the 2 cores go to one).
# Every step resumes: a finished round or run is skipped when the script runs again.
# Writes runs/rsft/<arm>/, runs/countdown/orm-post/, runs/distill/, runs/post/*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p runs/post
run() { local name=$1; shift; echo "== $name  $(date +%T)"; "$PY" -m verifier_training "$@" \
  --no-progress > runs/post/$name.log 2>&1; tail -8 runs/post/$name.log; }

# 1. STaR / Llama 2 rejection sampling with the ground truth: 3 rounds of 2000 problems x 8
run rsft-checker rsft --rule checker --rounds 3 --out runs/rsft/checker
# 2. the controls and DPO, from the same round-1 samples (same data volume, same steps)
run rsft-random rsft --rule random --rounds 1 --out runs/rsft/random --reuse-from runs/rsft/checker
run rsft-reference rsft --rule reference --rounds 1 --out runs/rsft/reference \
  --reuse-from runs/rsft/checker
run dpo-checker dpo --rule checker --rounds 1 --out runs/rsft/dpo-checker \
  --reuse-from runs/rsft/checker
# 2b. the checker with exact step checks: right answers reached through a forged step dropped
run rsft-checker-steps rsft --rule checker --exact-steps --per-problem 4 --rounds 3 \
  --out runs/rsft/checker-steps --reuse-from runs/rsft/checker
# 2c. "more SFT" as sft.py trains: fresh problems every step, system prompts and earlier turns
#     mixed in, the same 150 steps x 32 at the same peak lr (measured by passk on the same
#     500 held-out problems and request seeds as the rounds)
if [ ! -f runs/rsft/more-sft/config.json ]; then
  "$PY" -m verifier_training sft --task countdown --init bon_server/embedded/countdown-policy \
    --out runs/rsft/more-sft --steps 150 --batch-size 32 --lr 5e-4 --warmup-steps 10 --seed 3 \
    --no-progress > runs/post/more-sft.log 2>&1
fi
echo "== passk-more-sft  $(date +%T)"
"$PY" -m verifier_training passk --model runs/rsft/more-sft --problems 500 -k 16 \
  --json runs/rsft/more-sft/passk.json > runs/post/passk-more-sft.log 2>&1
tail -12 runs/post/passk-more-sft.log
# 3. a verifier without ground truth: an ORM trained on the first policy's round-1 samples
if [ ! -f runs/countdown/orm-post/config.json ]; then
  run train-orm train-orm --records runs/rsft/checker/round-1/samples.jsonl \
    --out runs/countdown/orm-post --init bon_server/embedded/countdown-policy \
    --hard-negatives 2 --epochs 3 --time-budget-min 8
fi
run rsft-verifier rsft --rule verifier --orm runs/countdown/orm-post \
  --selector weighted_majority --top-fraction 0.5 --per-problem 1 --rounds 3 \
  --out runs/rsft/verifier \
  --reuse-from runs/rsft/checker
# 4. distillation: the improved policy answering as the server would (best of 16, majority)
run distill distill --teacher runs/rsft/checker-steps/round-3 --teacher-best-of 16 \
  --teacher-selector majority --student bon_server/embedded/countdown-policy \
  --filters none,checker --problems 1000 --out runs/distill/rsft3-bo16
# 5. Best-of-N on top: does the ORM (trained on the first policy's samples) still add as much
#    on the improved policy? 500 held-out problems x 16 of each, the same ORM
for policy in bon_server/embedded/countdown-policy runs/rsft/checker-steps/round-3; do
  name=$(basename "$(dirname "$policy")")-$(basename "$policy")
  run "evaluate-$name" evaluate --policy "$policy" --records runs/post/eval-$name.jsonl -k 16 \
    --orm runs/countdown/orm-post --out-dir runs/post/eval-$name
done
echo "== done $(date +%T)"
# 6. DPO with the chosen answers' NLL added (RPO), where plain DPO lost pass@1
run dpo-rpo dpo --rule checker --sft-weight 1 --rounds 1 --out runs/rsft/dpo-rpo \
  --reuse-from runs/rsft/checker
echo "== done (rpo) $(date +%T)"
# 7. without ground truth, with the vote by value (README rows "rerun this session"): DPO (RPO)
#    on the verifier's pairs, the verifier rule keeping its most confident 30%, and
#    distillation of the improved policy answering by majority, its answers kept by the
#    checker or by the verifier (the ORM's top half; its scores are all under 0.5, hence
#    --threshold 0)
run dpo-verifier dpo --rule verifier --orm runs/countdown/orm-post --sft-weight 1 --rounds 1 \
  --out runs/rsft/dpo-verifier --reuse-from runs/rsft/checker
run rsft-verifier-top30 rsft --rule verifier --orm runs/countdown/orm-post \
  --selector weighted_majority --top-fraction 0.3 --per-problem 1 --rounds 3 \
  --out runs/rsft/verifier-top30 --reuse-from runs/rsft/checker
run distill-value distill --teacher bon_server/embedded/countdown-policy-rsft \
  --teacher-best-of 16 --teacher-selector majority --student bon_server/embedded/countdown-policy \
  --filters none,checker,verifier --orm runs/countdown/orm-post --threshold 0 --top-fraction 0.5 \
  --problems 1000 --out runs/distill/rsft-bo16-value
echo "== done (without ground truth) $(date +%T)"
