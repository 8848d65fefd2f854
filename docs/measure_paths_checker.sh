#!/usr/bin/env bash
# The shipped paths ORM (`bon_server/embedded/paths-orm`): the path checker built into a
# transformer (`build-checker`), trained by `train-orm` on the shipped policy's samples,
# evaluated on 500 held-out problems x 64, then shipped with the policy's serving.json. One job
# at a time, about 25 minutes on the 2-core machine. Figures in the README's "Graph paths".
#   bash docs/measure_paths_checker.sh [RUN_DIR]     (samples are shared with
#   docs/measure_paths_verifiers.sh: RUN_DIR/v)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE
P=bon_server/embedded/paths-policy
R=${1:-runs/paths}
V=$R/v
py=.venv/bin/python
mkdir -p "$V"
[ -f $V/train_samples.jsonl ] || $py -m verifier_training sample --policy $P --problems 2000 --seed 101 -k 8 --out $V/train_samples.jsonl --no-progress
[ -f $V/eval_samples.jsonl ] || $py -m verifier_training sample --policy $P --problems 500 --seed 1234 -k 64 --out $V/eval_samples.jsonl --no-progress
$py -m verifier_training.research build-checker --out $R/checker-init --check $V/eval_samples.jsonl --max-records 32000
$py -m verifier_training train-orm --records $V/train_samples.jsonl --out $R/checker-orm --init $R/checker-init --hard-negatives 1 --epochs 1 --lr 1e-4 --no-progress
$py -m verifier_training evaluate --records $V/eval_samples.jsonl --orm $R/checker-orm --out-dir $R/checker-eval --no-progress
# ship: the ORM beside the policy, and the policy's serving.json from what evaluated best at 16
$py - "$R" <<'PY'
import json, os, sys
from bon_server.config import EMBEDDED_DIR, SERVING_FILE
from verifier_training.data.records import write_json
from verifier_training.pipeline import serving_defaults, ship
run = sys.argv[1]
ship(f"{run}/checker-orm", "paths-orm", f"{run}/checker-eval/eval.json")
with open(f"{run}/checker-eval/eval.json") as f:
    serving = serving_defaults(json.load(f), "paths")
write_json(os.path.join(EMBEDDED_DIR, "paths-policy", SERVING_FILE), serving)
print(serving)
PY
