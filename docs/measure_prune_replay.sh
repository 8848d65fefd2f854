#!/usr/bin/env bash
# The README's pruning replays ("Pruning replayed: where prefix scores carry signal"): the
# server's pruning rule over each world's recorded held-out samples, with no signal (what a
# verifier that reads only the answer line gives), with the world's exact step checker (a
# perfect PRM) and, on Countdown, with the ORM trained on the first policy's samples.
# Needs the samples (the commands are in the README; each takes a few minutes):
#   runs/paths/v/eval_samples.jsonl     sample --policy bon_server/embedded/paths-policy --problems 500 --seed 1234 -k 64
#   runs/countdown/eval_samples.jsonl   sample --policy bon_server/embedded/countdown-policy --problems 500 --seed 1234 -k 64 --max-tokens 128
#   runs/arith/eval_samples.jsonl       sample --policy bon_server/embedded/arith-policy --problems 500 --seed 1234 -k 16
# and runs/countdown/orm-post (docs/measure_post_training.sh, step 3). Writes runs/prune/*.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p runs/prune
replay() { local name=$1; shift; echo "== $name"; "$PY" -m verifier_training prune "$@" --no-progress \
  > runs/prune/$name.txt 2>&1; cat runs/prune/$name.txt; }
for cap in 16 32 64; do
  replay paths-$cap --samples runs/paths/v/eval_samples.jsonl --cap $cap --every 1,2 --distinct
done
replay paths-16-orm --samples runs/paths/v/eval_samples.jsonl --cap 16 --every 1 \
  --scorers none --orm bon_server/embedded/paths-orm
replay countdown-16 --samples runs/countdown/eval_samples.jsonl --cap 16 --every 1,2 --distinct
replay countdown-16-orm --samples runs/countdown/eval_samples.jsonl --cap 16 --every 1,2 \
  --scorers none --orm runs/countdown/orm-post
replay arith-16 --samples runs/arith/eval_samples.jsonl --cap 16 --every 1,2 --distinct
