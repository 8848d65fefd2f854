#!/usr/bin/env bash
# The server with its ORM reading each request's prompt once (the default) against the same
# server reading it once per candidate (--no-verifier-share-prefix), side by side: both serve
# bon_server/embedded/paths-policy with its shipped paths-orm, and the load tester sends every
# cell to one then the other. Writes runs/orm-sharing/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p runs/orm-sharing
model=bon_server/embedded/paths-policy
.venv/bin/bon-server serve --port 8041 --model $model > runs/orm-sharing/shared.log 2>&1 &
a=$!
until curl -sf http://127.0.0.1:8041/health >/dev/null; do sleep 2; done
.venv/bin/bon-server serve --port 8042 --model $model --no-verifier-share-prefix \
  > runs/orm-sharing/full.log 2>&1 &
b=$!
until curl -sf http://127.0.0.1:8042/health >/dev/null; do sleep 2; done
.venv/bin/python -m loadtest run --base-url http://127.0.0.1:8041 --name shared \
  --compare full=bon:http://127.0.0.1:8042 --best-of 16 --concurrency 1,16 \
  --requests "${REQUESTS:-96}" --warmup 4 --dataset paths --max-tokens 128 --no-progress \
  --no-plots --out runs/orm-sharing/load 2>&1 | tee runs/orm-sharing/load.txt
kill $a $b; wait $a $b || true
