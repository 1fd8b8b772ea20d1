#!/usr/bin/env bash
# The serving tier: the same Evaluate load (MesoInception-4, the four MesoNet
# samples, 8 streams with 4 images outstanding each) through 1 and 2
# dfc-server replicas, and through a coordinator that serves Evaluate itself
# (DFC before dfc-server) when its binary is given; and one replica that
# decodes images in its own process instead of its dfc-decode processes. One
# run each, Markdown.
# Usage: bench/serving.sh [EMBEDDED_COORDINATOR_BINARY]
#   (after scripts/setup.sh; needs ../shared. An embedded coordinator:
#    git worktree add /tmp/old 4e72812 && cmake -S /tmp/old -B /tmp/old/build -G Ninja
#    && ninja -C /tmp/old/build dfc-coordinator)
set -euo pipefail
cd "$(dirname "$0")/.."
embedded=${1:-}
bin=build/bin
cores=$(nproc)
weights=../shared/weights/mesonet/MesoInception_DF.h5
images=(../shared/data/mesonet-samples/*/*)
[ -f "$weights" ] || { echo "serving.sh: $weights not found" >&2; exit 2; }
tmp=$(mktemp -d)
pids=()
stop() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; pids=(); }
trap 'stop; rm -rf "$tmp"' EXIT
port=$((40000 + RANDOM % 20000))
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
load() {  # ADDRESSES LABEL
  local r
  r=$($bin/eval_bench --server "$1" --model meso --streams 8 --window 4 --per-stream 96 --warmup 8 "${images[@]}")
  printf "| %s | %.1f | %.1f | %.1f |\n" "$2" "$(echo "$r" | field images_per_second)" \
    "$(echo "$r" | field p50_ms)" "$(echo "$r" | field p99_ms)"
}
wait_serving() {  # ADDRESS
  for _ in $(seq 200); do
    $bin/dfc --coordinator "127.0.0.1:$port" models --server "$1" >/dev/null 2>&1 && return 0; sleep 0.1
  done
  echo "serving.sh: $1 did not come up" >&2; exit 1
}

echo "8 streams x 4 outstanding, MesoInception-4, $cores cores, max batch 8, greedy batching"
echo
echo "| serving | img/s | p50 ms | p99 ms |"
echo "|---|---|---|---|"
$bin/dfc-coordinator --listen "127.0.0.1:$port" --state "$tmp/state" >"$tmp/coordinator.log" 2>&1 &
pids+=($!)
servers=()
for r in 1 2; do
  a="127.0.0.1:$((port + r))"
  # Two replicas share the cores: each gets half of them.
  threads=$(( r == 1 ? cores : (cores / 2 > 0 ? cores / 2 : 1) ))
  $bin/dfc-server --listen "$a" --coordinator "127.0.0.1:$port" --models-dir "$tmp/state/models" --device cpu \
    --eval-threads "$threads" --eval-max-batch 8 >"$tmp/server-$r.log" 2>&1 &
  pids+=($!)
  servers+=("$a")
  wait_serving "$a"
  if [ "$r" = 1 ]; then
    $bin/dfc --coordinator "127.0.0.1:$port" import --server "$a" --name meso --model mesoinception4 \
      --weights "$weights" >/dev/null
    load "$a" "1 dfc-server replica ($threads threads)"
    # The same replica decoding in its own process (no dfc-decode): what the
    # confined decoders cost.
    b="127.0.0.1:$((port + 3))"
    $bin/dfc-server --listen "$b" --coordinator "127.0.0.1:$port" --models-dir "$tmp/state/models" --device cpu \
      --eval-threads "$threads" --eval-max-batch 8 --decode-processes 0 >"$tmp/server-inproc.log" 2>&1 &
    inproc=$!
    wait_serving "$b"
    load "$b" "1 dfc-server replica ($threads threads), images decoded in its own process"
    kill "$inproc"; wait "$inproc" 2>/dev/null || true
  fi
done
# Replica 1 runs with all the cores' threads; restart it with half for the pair.
kill "${pids[1]}"; wait "${pids[1]}" 2>/dev/null || true
$bin/dfc-server --listen "${servers[0]}" --coordinator "127.0.0.1:$port" --models-dir "$tmp/state/models" \
  --device cpu --eval-threads $(( cores / 2 > 0 ? cores / 2 : 1 )) --eval-max-batch 8 >"$tmp/server-1b.log" 2>&1 &
pids[1]=$!
wait_serving "${servers[0]}"
load "${servers[0]},${servers[1]}" "2 dfc-server replicas (round-robin, $(( cores / 2 > 0 ? cores / 2 : 1 )) threads each)"
stop
if [ -n "$embedded" ]; then
  "$embedded" --listen "127.0.0.1:$((port + 5))" --state "$tmp/old" --eval-threads "$cores" --eval-max-batch 8 \
    >"$tmp/old.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do $bin/eval_bench --help >/dev/null; sleep 0.1; grep -q listening "$tmp/old.log" && break; done
  "$bin/dfc" --coordinator "127.0.0.1:$((port + 5))" import --server "127.0.0.1:$((port + 5))" --name meso \
    --model mesoinception4 --weights "$weights" >/dev/null
  load "127.0.0.1:$((port + 5))" "coordinator-embedded serving ($cores threads; before dfc-server)"
  stop
fi
