#!/usr/bin/env bash
# Side-by-side benchmarks, one run each, printed as a Markdown table with the
# ratio DFC / Python PyTorch (same LibTorch: Debian's python3-torch; same
# thread count). Needs a quiet machine.
# Usage: bench/run.sh [THREADS]      (after scripts/setup.sh --with-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
py=/usr/bin/python3   # Debian's Python with python3-torch, not a pyenv one
tcmalloc=$(ls /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 2>/dev/null || true)
bin=build/bin
ips() { sed -n 's/.*"images_per_second": \([0-9.]*\).*/\1/p'; }

echo "| benchmark | DFC img/s | Python PyTorch img/s | ratio | Python + tcmalloc img/s | ratio |"
echo "|---|---|---|---|---|---|"
row() {  # name dfc-args py-args
  local d p pt
  d=$($bin/train_bench $2 --threads "$threads" | ips)
  p=$($py bench/train_bench.py $3 --threads "$threads" | ips)
  pt=$(LD_PRELOAD=$tcmalloc $py bench/train_bench.py $3 --threads "$threads" | ips)
  awk -v n="$1" -v d="$d" -v p="$p" -v pt="$pt" \
    'BEGIN { printf "| %s | %.1f | %.1f | %.2f | %.1f | %.2f |\n", n, d, p, d / p, pt, d / pt }'
}
row "train MesoInception-4, batch 32, 256 px" "--model mesoinception4 --batch 32 --steps 10" \
    "--model mesoinception4 --batch 32 --steps 10"
row "train ResNet-50 VGGFace, batch 8, 224 px" "--model resnet50-vggface --batch 8 --steps 5" \
    "--model resnet50 --batch 8 --steps 5"

# Loader alone against what the trainer consumes.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$bin/dfc synth --out "$tmp/syn" --count 1000 --seed 2 >/dev/null
$bin/dfc shard --src "$tmp/syn" --out "$tmp/enc" >/dev/null
$bin/dfc shard --src "$tmp/syn" --out "$tmp/rgb" --format rgb8 >/dev/null
echo
echo "| loader (1000 synthetic 256 px JPEGs) | threads | img/s | shard bytes |"
echo "|---|---|---|---|"
for fmt in enc rgb; do
  for t in 1 "$threads"; do
    r=$($bin/loader_bench --data "$tmp/$fmt" --threads "$t" --epochs 2 | ips)
    printf "| %s | %d | %.0f | %s |\n" "$fmt" "$t" "$r" "$(du -sb "$tmp/$fmt" | cut -f1)"
  done
done
