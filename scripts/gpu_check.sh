#!/usr/bin/env bash
# One GPU session, one script (../shared/GPU.md): inventory the machine, build
# against its CUDA LibTorch (scripts/build_cuda.sh, deps/ gathered beforehand
# by scripts/gather_cuda_deps.sh), run the CUDA test subset, a short training
# job of each model, prediction parity with the CPU build on the shared
# samples, and GPU throughput of both models next to Python PyTorch on the same
# GPU, then the rest of the build. Everything goes to $OUT (default
# gpu-results/): log.txt, ctest.txt, parity.txt, train-*.txt, bench.md,
# convert.txt, loader.txt, nccl-job.txt, build-rest.txt.
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

step "build: what the checks below run"
# The programs, the benchmarks and the CUDA test subset's binaries first, so
# the figures come before the rest of the build (the last step builds every
# other target). -k 0 (build_cuda.sh): one target that fails to compile
# leaves the rest checked. GPU_CHECK_TARGETS=all builds everything here.
targets="dfc dfc-coordinator dfc-worker dfc-server train_bench loader_bench nccl_collective_test graphed_step_test
  image_codec_test keras_layers_test keras_h5_test trainer_test dfc_cli_test"
[[ ${GPU_CHECK_TARGETS:-} == all ]] && targets=""
scripts/build_cuda.sh -j"$(nproc)" ${targets:+--targets "$targets"} ||
  { [[ -x build-cuda/bin/dfc ]] || { echo "BUILD FAILED"; exit 1; }; echo "BUILD PARTLY FAILED"; }
bin=build-cuda/bin
# The gathered Debian libraries' transitive needs (libGLX for OpenCV, Abseil's
# internals) are found through the loader path, not the binaries' RPATH.
lib=$PWD/deps/root/usr/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH=$lib:$lib/hdf5/serial:${LD_LIBRARY_PATH:-}

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
# Inference in bf16 on the GPU (dfc-server's default there): same classes,
# P(real) within 0.02 of the fp32 reference.
$bin/dfc predict --precision bf16 --model mesoinception4 --weights "$shared/weights/mesonet/MesoInception_DF.h5" \
  "$s/df/df00204.jpg" "$s/df/df01254.jpg" "$s/real/real00240.jpg" "$s/real/real00772.jpg" >"$out/gpu-bf16.tsv" &&
paste "$out/cpu.tsv" "$out/gpu-bf16.tsv" | awk -F'\t' '{dp = $2 - $5; if (dp < 0) dp = -dp;
  ok = dp <= 0.02 && ($2 > 0.5) == ($5 > 0.5); printf "%s bf16 %s/%s %s\n", $1, $5, $6, ok ? "OK" : "MISMATCH" }' |
  tee -a "$out/parity.txt"

step "dfc-server's confined weights converter in this build (what an import runs)"
# The CUDA LibTorch must not have started threads or need files beyond the
# sandbox's before the upload is read (serving/weights_converter.h).
rm -rf "$out/convert" && mkdir -p "$out/convert"
$bin/dfc-server --convert-weights mesoinception4 "$shared/weights/mesonet/MesoInception_DF.h5" \
  "$out/convert/w.ckpt" 4294967296 2>&1 | tee "$out/convert.txt"
[[ -s $out/convert/w.ckpt ]] && echo "converter OK" | tee -a "$out/convert.txt" ||
  echo "converter FAILED" | tee -a "$out/convert.txt"
rm -rf "$out/convert"

step "training: each model, one short job on the GPU"
tmp=$(mktemp -d)
$bin/dfc synth --out "$tmp/syn" --count 512 --seed 3 >/dev/null
$bin/dfc shard --src "$tmp/syn" --out "$tmp/sh" --validation-split 0.25 >/dev/null
if [[ -z ${SKIP_TRAIN:-} ]]; then
  $bin/dfc train --model mesoinception4 --data "$tmp/sh" --out "$tmp/meso" --epochs 3 --bn-momentum 0.9 \
    >"$out/train-meso.txt" 2>&1; tail -2 "$out/train-meso.txt"
  $bin/dfc train --model resnet50-vggface --data "$tmp/sh" --out "$tmp/resnet" --epochs 1 --batch-size 32 \
    >"$out/train-resnet.txt" 2>&1; tail -2 "$out/train-resnet.txt"
  # The same MesoNet job with the step eager: the graphed run (the default,
  # auto) must say it captured and land in the same accuracy band.
  $bin/dfc train --model mesoinception4 --data "$tmp/sh" --out "$tmp/meso-eager" --epochs 3 --bn-momentum 0.9 \
    --cuda-graphs off >"$out/train-meso-eager.txt" 2>&1; tail -1 "$out/train-meso-eager.txt"
  grep -h "training step:" "$out/train-meso.txt" "$out/train-meso-eager.txt"
fi

step "throughput: DFC against Python PyTorch on this GPU (training step, synthetic batches)"
ips() { sed -n 's/.*"images_per_second": \([0-9.]*\).*/\1/p' | tail -1; }
# DFC's precisions (when this build has them: train_bench --precision) against
# Python PyTorch eager fp32 and AMP (torch.autocast bf16, channels_last).
dfc_precisions=fp32
$bin/train_bench --help 2>&1 | grep -q -- --precision && dfc_precisions+=" bf16"
$bin/train_bench --help 2>&1 | grep -q -- --cuda-graphs && dfc_precisions+=" bf16+graphs"
# The Python peer as a competent user runs it: tcmalloc preloaded (the
# gathered one; DFC's binaries link it), channels_last in the variants.
tc=$lib/libtcmalloc_minimal.so.4
pyrun() {
  if [[ -f $tc ]]; then LD_PRELOAD=$tc "$py" "$@" && return; echo "python with tcmalloc failed; without" >&2; fi
  "$py" "$@"
}
: >"$out/bench-values.txt"
{
  echo "| model | batch | impl | img/s |"
  echo "|---|---|---|---|"
  for spec in "mesoinception4 mesoinception4 ${MESO_BATCH:-256}" "resnet50-vggface resnet50 ${RESNET_BATCH:-256}"; do
    set -- $spec
    for p in $dfc_precisions; do
      args=(--precision "${p%%+*}"); [[ $p == *graphs ]] && args+=(--cuda-graphs on)
      [[ $dfc_precisions == fp32 ]] && args=()
      v=$($bin/train_bench --model "$1" --batch "$3" --steps ${BENCH_STEPS:-40} --warmup 5 "${args[@]}" 2>>"$out/bench-err.txt" | ips)
      echo "| $1 | $3 | dfc $p | ${v:-FAILED} |"
      echo "$1 dfc-$p ${v:-0}" >>"$out/bench-values.txt"
    done
    IFS=';' read -ra pyv <<<"${PY_VARIANTS:-fp32;fp32 --channels-last;bf16 --channels-last}"
    for p in "${pyv[@]}"; do
      v=$(pyrun bench/train_bench.py --model "$2" --batch "$3" --steps ${BENCH_STEPS:-40} --warmup 5 --device cuda --precision $p 2>>"$out/bench-err.txt" | ips)
      echo "| $1 | $3 | python eager $p | ${v:-FAILED} |"
      echo "$1 py-${p// /} ${v:-0}" >>"$out/bench-values.txt"
    done
  done
} | tee "$out/bench.md"
# The issue's ratios, from this one run: DFC's best (bf16 + graphs) against
# Python eager fp32 (the faster of its two layouts) and AMP (bf16, channels_last).
awk '{ v[$1 " " $2] = $3 } END {
  for (m in v) { split(m, k, " "); models[k[1]] = 1 }
  for (mod in models) {
    d = v[mod " dfc-bf16+graphs"]; e = v[mod " dfc-bf16"]; a = v[mod " py-bf16--channels-last"]
    f = v[mod " py-fp32"]; if (v[mod " py-fp32--channels-last"] > f) f = v[mod " py-fp32--channels-last"]
    printf "%s: dfc bf16+graphs %.0f img/s = %.2fx python eager fp32, %.2fx python AMP; dfc bf16 eager %.2fx python AMP\n",
      mod, d, f ? d / f : 0, a ? d / a : 0, a ? e / a : 0 } }' "$out/bench-values.txt" | tee -a "$out/bench.md"

step "data loader: images/s on this machine's $(nproc) cores (decode + resize + batch)"
real=${DFC_LOADER_DATA:-$shared/data/hard-fake-vs-real}
if [[ -d $real ]]; then
  $bin/dfc shard --src "$real" --out "$tmp/real-sh" --image-size 224 >/dev/null 2>&1 ||
    $bin/dfc shard --src "$real" --out "$tmp/real-sh" >/dev/null
  for t in 1 4 8 15 16; do
    echo "threads $t: $($bin/loader_bench --data "$tmp/real-sh" --threads $t --epochs 5 --batch 32)"
  done | tee "$out/loader.txt"
fi

step "NCCL: one short job through the local cluster (world size 1, one GPU)"
st=$tmp/cluster
# A cluster that does not come up skips the job: waiting for a worker that
# never registers would spend the session's minutes.
if $bin/dfc cluster up --state "$st" --workers 1 --gpus 1 --listen 127.0.0.1:50071; then
  export DFC_COORDINATOR=127.0.0.1:50071
  job=$($bin/dfc submit --model mesoinception4 --data "$tmp/sh" --epochs 2 --world-size 1 --bn-momentum 0.9)
  echo "job $job"
  timeout 200 $bin/dfc watch "$job" --timeout 180 2>&1 | tail -8 | tee "$out/nccl-job.txt"
  $bin/dfc status "$job" | head -20 | tee -a "$out/nccl-job.txt"
  # The server's "images are decoded by N dfc-decode processes (...)": its decoders confined themselves;
  # "threads: ..." and "CPU(s) per rank": how the rank sized its threads on the GPU node's cores.
  grep -h -i "nccl\|backend\|confined\|dfc-decode\|threads:\|per rank\|may use" "$st"/logs/*.log "$st"/workers/*/"$job"/attempt-*/rank-*/log 2>/dev/null | head -12
else
  echo "NCCL JOB SKIPPED: the local cluster did not come up" | tee "$out/nccl-job.txt"
  tail -n 5 "$st"/logs/*.log
fi
$bin/dfc cluster down --state "$st"
step "rank confinement on the CUDA build: a CPU-slot rank confines itself, or says why not"
# An empty assignment: the rank enters its sandbox first, then refuses the
# job (no model). "the process has N threads" means the CUDA LibTorch
# started a thread before main, and CPU-slot ranks on this build need
# dfc-worker --rank-sandbox-off.
$bin/dfc-worker rank --assignment "" --sandbox on 2>&1 | head -3 | tee "$out/rank-sandbox.txt"
step "CUDA test subset"
ctest --test-dir build-cuda -R "${CTEST_FILTER:-NcclCollective|GraphedTrainStep|CapturableAdam|ImageCodec|KerasLayers|KerasH5|Trainer|DfcCli}" --output-on-failure \
  -j4 >"$out/ctest.txt" 2>&1
tail -15 "$out/ctest.txt"

step "build: every other target (all tests and tools against this LibTorch)"
ninja -C build-cuda -k 0 -j"$(nproc)" >"$out/build-rest.txt" 2>&1 && echo "all targets built" ||
  { grep -E "^FAILED|error:" "$out/build-rest.txt" | head -20; echo "SOME TARGETS FAILED (build-rest.txt)"; }

rm -rf "$tmp"
