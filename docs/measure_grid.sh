#!/usr/bin/env bash
# The README's accuracy-vs-tokens curves: fixed best_of = 1..64, adaptive (best_of as the cap)
# and, where a verifier ships, pruned, per world, through the running server at concurrency 16.
# paths with its shipped verifier (paths-orm, selector verifier); countdown and arith by majority
# (no verifier ships for them, so nothing to prune with). Writes runs/grid/<world>/ (report,
# accuracy_vs_tokens.png). REQUESTS (default 100) problems per cell; about 25 minutes on 2 cores.
# CONCURRENCY (default 16) and OUT (default runs/grid) for the same grid at another load.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${REQUESTS:-100}
concurrency=${CONCURRENCY:-16}
out=${OUT:-runs/grid}
mkdir -p $out
for world in paths countdown arith; do
  port=8021
  extra=(--adaptive)
  selector=()
  if [ $world = paths ]; then extra+=(--prune); else selector=(--selector majority); fi
  .venv/bin/bon-server serve --port $port --model bon_server/embedded/${world}-policy \
    > $out/server-$world.log 2>&1 &
  pid=$!
  until curl -sf http://127.0.0.1:$port/health >/dev/null; do sleep 2; done
  .venv/bin/python -m loadtest run --base-url http://127.0.0.1:$port "${extra[@]}" \
    "${selector[@]}" --best-of 1,2,4,8,16,32,64 --concurrency $concurrency --requests "$requests" \
    --dataset $world --max-tokens 128 --out $out/$world --no-progress \
    > $out/$world.txt 2>&1 || true
  kill $pid; wait $pid || true
done
echo done
