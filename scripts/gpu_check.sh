#!/usr/bin/env bash
# One GPU session, one script (../shared/GPU.md): inventory the machine, build
# against its CUDA LibTorch (scripts/build_cuda.sh, deps/ gathered beforehand
# by scripts/gather_cuda_deps.sh), run the CUDA test subset, a short training
# job of each model, prediction parity with the CPU build on the shared
# samples, and GPU throughput of both models next to Python PyTorch on the same
# GPU. Everything goes to $OUT (default gpu-results/): log.txt, ctest.txt,
# parity.txt, train-*.txt, bench.md.
#   DFC_SHARED_DIR=/path/to/shared OUT=/tmp/out scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
py=${PYTHON:-python3}
shared=${DFC_SHARED_DIR:-$(cd .. && pwd)/shared}
export DFC_SHARED_DIR=$shared
step() { echo; echo "== $* ($(date +%T))"; }

step inventory
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
nvcc --version | tail -2 || true
$py -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "abi", torch._C._GLIBCXX_USE_CXX11_ABI, "gpus", torch.cuda.device_count())'
nproc; free -g | head -2; ls deps/*.deb 2>/dev/null | wc -l

step build
scripts/build_cuda.sh -j"$(nproc)" || { echo "BUILD FAILED"; exit 1; }
bin=build-cuda/bin

step "CUDA test subset"
ctest --test-dir build-cuda -R 'NcclCollective|ImageCodec|KerasLayers|KerasH5|Trainer|DfcCli' --output-on-failure \
  -j4 >"$out/ctest.txt" 2>&1
tail -15 "$out/ctest.txt"

step "prediction parity with the CPU build (MesoInception_DF.h5, shared samples; tolerance 1e-4)"
# The CPU build's numbers (dfc predict; equal to scripts/keras_reference.py to ~1e-6).
cat >"$out/cpu.tsv" <<'TSV'
df/df00204.jpg	0.026218	-3.614732
df/df01254.jpg	0.000952	-6.956028
real/real00240.jpg	1.000000	21.596182
real/real00772.jpg	1.000000	45.603153
TSV
s=$shared/data/mesonet-samples
$bin/dfc predict --model mesoinception4 --weights "$shared/weights/mesonet/MesoInception_DF.h5" \
  "$s/df/df00204.jpg" "$s/df/df01254.jpg" "$s/real/real00240.jpg" "$s/real/real00772.jpg" >"$out/gpu.tsv"
paste "$out/cpu.tsv" "$out/gpu.tsv" | awk -F'\t' '{dp = $2 - $5; dl = ($3 - $6) / ($3 < 0 ? -$3 : $3);
  if (dp < 0) dp = -dp; if (dl < 0) dl = -dl; ok = dp <= 1e-4 && dl <= 1e-4;
  printf "%s cpu %s/%s gpu %s/%s %s\n", $1, $2, $3, $5, $6, ok ? "OK" : "MISMATCH"; bad += !ok }
  END { exit bad > 0 }' | tee "$out/parity.txt"

step "training: each model, one short job on the GPU"
tmp=$(mktemp -d)
$bin/dfc synth --out "$tmp/syn" --count 512 --seed 3 >/dev/null
$bin/dfc shard --src "$tmp/syn" --out "$tmp/sh" --validation-split 0.25 >/dev/null
$bin/dfc train --model mesoinception4 --data "$tmp/sh" --out "$tmp/meso" --epochs 3 --bn-momentum 0.9 \
  >"$out/train-meso.txt" 2>&1; tail -2 "$out/train-meso.txt"
$bin/dfc train --model resnet50-vggface --data "$tmp/sh" --out "$tmp/resnet" --epochs 1 --batch-size 32 \
  >"$out/train-resnet.txt" 2>&1; tail -2 "$out/train-resnet.txt"

step "throughput: DFC against Python PyTorch on this GPU (training step, synthetic batches)"
ips() { sed -n 's/.*"images_per_second": \([0-9.]*\).*/\1/p'; }
{
  echo "| model | batch | DFC img/s | Python PyTorch img/s | ratio |"
  echo "|---|---|---|---|---|"
  for spec in "mesoinception4 mesoinception4 64" "resnet50-vggface resnet50 32"; do
    set -- $spec
    d=$($bin/train_bench --model "$1" --batch "$3" --steps 30 | ips)
    p=$($py bench/train_bench.py --model "$2" --batch "$3" --steps 30 --device cuda | ips)
    awk -v m="$1" -v b="$3" -v d="$d" -v p="$p" 'BEGIN { printf "| %s | %d | %.1f | %.1f | %.2f |\n", m, b, d, p, d / p }'
  done
} | tee "$out/bench.md"
rm -rf "$tmp"
