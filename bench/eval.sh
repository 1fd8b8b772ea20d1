#!/usr/bin/env bash
# Serving benchmark: MesoInception-4 through the Evaluate stream of a local
# dfc-server (with its coordinator) with 1, 8 and 32 concurrent streams (each a live feed with
# one image outstanding), for three batcher settings; then Python PyTorch
# scoring the same images in a loop. One run each, Markdown tables.
# Usage: bench/eval.sh [THREADS]   (after scripts/setup.sh --with-bench; needs ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
py=/usr/bin/python3
bin=build/bin
weights=../shared/weights/mesonet/MesoInception_DF.h5
images=(../shared/data/mesonet-samples/*/*)
[ -f "$weights" ] || { echo "eval.sh: $weights not found" >&2; exit 2; }
tmp=$(mktemp -d)
pid=
cpid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; [ -n "$cpid" ] && kill "$cpid" 2>/dev/null; rm -rf "$tmp"' EXIT
port=$((40000 + RANDOM % 20000))
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }

echo "| batcher | streams | img/s | p50 ms | p99 ms |"
echo "|---|---|---|---|---|"
for cfg in "batch 1|--eval-max-batch 1" "max 8, greedy (default)|--eval-max-batch 8 --eval-max-delay-us 0" \
           "max 32, greedy|--eval-max-batch 32 --eval-max-delay-us 0" \
           "max 32, wait up to 5 ms|--eval-max-batch 32 --eval-max-delay-us 5000"; do
  name=${cfg%%|*}
  $bin/dfc-coordinator --listen 127.0.0.1:$port --state "$tmp/state" >"$tmp/coordinator.log" 2>&1 &
  cpid=$!
  $bin/dfc-server --listen 127.0.0.1:$((port + 1)) --coordinator 127.0.0.1:$port --models-dir "$tmp/state/models" \
    --device cpu --eval-threads "$threads" ${cfg#*|} >"$tmp/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    $bin/dfc --coordinator 127.0.0.1:$port models --server 127.0.0.1:$((port + 1)) >/dev/null 2>&1 && break; sleep 0.1
  done
  $bin/dfc --coordinator 127.0.0.1:$port import --server 127.0.0.1:$((port + 1)) --name meso --model mesoinception4 \
    --weights "$weights" --replace >/dev/null
  for s in 1 8 32; do
    r=$($bin/eval_bench --server 127.0.0.1:$((port + 1)) --model meso --streams "$s" --per-stream $((512 / s)) \
        "${images[@]}")
    printf "| %s | %d | %.1f | %.1f | %.1f |\n" "$name" "$s" "$(echo "$r" | field images_per_second)" \
      "$(echo "$r" | field p50_ms)" "$(echo "$r" | field p99_ms)"
  done
  kill "$pid" "$cpid"; wait "$pid" "$cpid" 2>/dev/null || true; pid=; cpid=
  port=$((port + 2))
done
echo
echo "| Python PyTorch loop (PIL decode + forward) | img/s | p50 ms | p99 ms |"
echo "|---|---|---|---|"
tcmalloc=$(ls /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 2>/dev/null || true)
for b in 1 8 32; do
  for pre in "" "$tcmalloc"; do
    r=$(LD_PRELOAD=$pre $py bench/eval_bench.py --batch "$b" --images 512 --threads "$threads" "${images[@]}")
    printf "| batch %d%s | %.1f | %.1f | %.1f |\n" "$b" "${pre:+ + tcmalloc}" "$(echo "$r" | field images_per_second)" \
      "$(echo "$r" | field p50_ms)" "$(echo "$r" | field p99_ms)"
  done
done
