#!/usr/bin/env bash
# On a Debian 12 CPU machine: downloads (never installs) the .deb files the
# CUDA build needs and a GPU machine with only CUDA + PyTorch lacks, into
# deps/ (or --out DIR). They stay compressed: everything that travels to the
# GPU machine must fit in 64 MiB, which this script checks. Only OpenCV's
# core, imgproc and imgcodecs are taken, not the all-modules -dev package.
#   scripts/gather_cuda_deps.sh [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out=deps
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out=$2; shift ;;
    *) echo "gather_cuda_deps.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
cd "$out"
pkgs=(libgrpc++-dev libgrpc++1.51 libgrpc-dev libgrpc29 protobuf-compiler-grpc libprotobuf-dev libprotobuf32
      protobuf-compiler libprotoc32 libabsl-dev libabsl20220623 libsqlite3-dev libsqlite3-0 libhdf5-dev
      libhdf5-103-1 libsz2 libaec0 libcli11-dev nlohmann-json3-dev libgloo-dev
      libopencv-core-dev libopencv-core406 libopencv-imgproc-dev libopencv-imgproc406
      libopencv-imgcodecs-dev libopencv-imgcodecs406 libc-ares2 libre2-9 libssl-dev libtcmalloc-minimal4)
apt-get download "${pkgs[@]}"
bytes=$(cat ./*.deb | wc -c)
echo "gather_cuda_deps: ${#pkgs[@]} packages, $((bytes / 1024 / 1024)) MiB in $(pwd)"
if (( bytes > 64 * 1024 * 1024 )); then
  echo "gather_cuda_deps: over the 64 MiB that can travel to the GPU machine" >&2
  exit 1
fi
