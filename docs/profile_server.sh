#!/usr/bin/env bash
# Where the server's time goes under load: `bon-server serve` is started and warmed up, then
# py-spy attaches to it and to its subprocesses (vLLM's EngineCore and its CPU worker) while
# the load tester runs best_of=16 at concurrency 16 (the benchmark's throughput cell) by
# majority; docs/profile_summary.py then prints each process's busy time by stage.
# Writes runs/profile/. MODEL and REQUESTS override the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-bon_server/embedded/paths-policy}
requests=${REQUESTS:-160}
port=8031
mkdir -p runs/profile
.venv/bin/bon-server serve --port $port --model "$model" > runs/profile/server.log 2>&1 &
server=$!
until curl -sf http://127.0.0.1:$port/health >/dev/null; do sleep 2; done
load() {
  .venv/bin/python -m loadtest run --base-url http://127.0.0.1:$port --best-of 16 \
    --concurrency 16 --requests "$1" --selector majority --max-tokens 128 --no-plots \
    --no-progress --out "runs/profile/$2" > "runs/profile/$2.txt" 2>&1
}
load 16 warmup  # the engine's first batches of this shape, outside the profile
.venv/bin/py-spy record --pid $server --subprocesses --rate 50 -f speedscope \
  -o runs/profile/server.json > runs/profile/py-spy.log 2>&1 &
spy=$!
sleep 2
load "$requests" load
kill -INT $spy; wait $spy || true
kill $server; wait $server || true
.venv/bin/python docs/profile_summary.py runs/profile/server.json | tee runs/profile/summary.md
