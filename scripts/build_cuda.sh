#!/usr/bin/env bash
# Builds DFC against a CUDA LibTorch -- the one inside a PyTorch install --
# into build-cuda/. CMake sees CUDA in the found Torch and compiles the NCCL
# branch; nothing else changes.
#   scripts/build_cuda.sh [--no-gather] [--deps DIR]
# Without --no-gather it first unpacks the Debian packages that the GPU machine
# lacks (gRPC, Protobuf, Abseil, OpenCV core/imgproc/imgcodecs, HDF5, SQLite,
# CLI11, nlohmann-json, gloo headers), gathered on a CPU machine with
# scripts/gather_cuda_deps.sh into DIR (default: deps/), into deps/root.
set -euo pipefail
cd "$(dirname "$0")/.."
gather=1
deps=deps
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-gather) gather=0 ;;
    --deps) deps=$2; shift ;;
    *) echo "build_cuda.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
py=${PYTHON:-python3}
torch_prefix=$($py -c 'import torch; print(torch.utils.cmake_prefix_path)')
abi=$($py -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
echo "build_cuda: torch $($py -c 'import torch; print(torch.__version__, torch.version.cuda)'), C++11 ABI $abi"
prefix=$torch_prefix
if [[ $gather == 1 ]]; then
  root=$(pwd)/$deps/root
  mkdir -p "$root"
  for deb in "$deps"/*.deb; do dpkg -x "$deb" "$root"; done
  prefix="$prefix;$root/usr;$root/usr/lib/x86_64-linux-gnu/cmake"
  export PKG_CONFIG_PATH=$root/usr/lib/x86_64-linux-gnu/pkgconfig
  export LD_LIBRARY_PATH=$root/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}
  export PATH=$root/usr/bin:$PATH
fi
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_CXX_FLAGS="-D_GLIBCXX_USE_CXX11_ABI=$abi" -DDFC_BUILD_TESTS=ON
ninja -C build-cuda -j "$(nproc)"
