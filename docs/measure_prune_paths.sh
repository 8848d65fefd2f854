#!/usr/bin/env bash
# The README's pruned paths rows through the server: paths-policy with its shipped verifier
# (paths-orm, whose prefix scores all tie) and --prune-distinct, fixed best_of 16 and 32 beside
# pruned 16 and 32 (keep 0.5 after the first step), at concurrency 1 and 16. Writes
# runs/prune-server/ (report; OUT to change). REQUESTS (default 100) problems per cell, the same
# problems in every cell; CONCURRENCY (default 1,16).
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${REQUESTS:-100}
concurrency=${CONCURRENCY:-1,16}
out=${OUT:-runs/prune-server}
port=8022
mkdir -p $out
.venv/bin/bon-server serve --port $port --model bon_server/embedded/paths-policy \
  --prune-distinct > $out/server.log 2>&1 &
pid=$!
until curl -sf http://127.0.0.1:$port/health >/dev/null; do sleep 2; done
.venv/bin/python -m loadtest run --base-url http://127.0.0.1:$port --prune --best-of 16,32 \
  --concurrency $concurrency --requests "$requests" --dataset paths --max-tokens 128 --warmup 2 \
  --out $out --no-progress > $out/report.txt 2>&1 || true
kill $pid; wait $pid || true
cat $out/report.txt
