#!/usr/bin/env bash
# The README's adaptive table: adaptive at cap 16 against fixed best_of=16, per world, through
# the running server (the embedded policies, majority: Countdown votes by an answer's value and
# numbers, its world's rule). Writes runs/adaptive/v2-<world>/.
# Usage: bash docs/measure_adaptive.sh [WORLD ...]   (default: arith countdown)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/adaptive
worlds=("$@")
[ ${#worlds[@]} -gt 0 ] || worlds=(arith countdown)
for world in "${worlds[@]}"; do
  port=8011
  model=bon_server/embedded/${world}-policy
  .venv/bin/bon-server serve --port $port --model $model > runs/adaptive/server-$world.log 2>&1 &
  pid=$!
  until curl -sf http://127.0.0.1:$port/health >/dev/null; do sleep 2; done
  .venv/bin/python -m loadtest run --base-url http://127.0.0.1:$port --adaptive --best-of 16 \
    --concurrency 1,16 --requests 300 --dataset $world --selector majority --max-tokens 128 \
    --out runs/adaptive/v2-$world --no-progress > runs/adaptive/v2-$world.txt 2>&1 || true
  kill $pid; wait $pid || true
done
echo done
