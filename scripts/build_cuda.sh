#!/usr/bin/env bash
# Builds DFC against a CUDA LibTorch -- the one inside a PyTorch install
# (../shared/GPU.md) -- into build-cuda/. CMake sees CUDA in the found Torch
# and the NCCL backend is compiled against the CUDA toolkit and NCCL (PyTorch's
# nvidia/nccl when present); nothing else changes.
#   scripts/build_cuda.sh [--no-gather] [--deps DIR] [--build-dir DIR] [--torch-prefix DIR]
#                         [--configure-only] [--targets "T1 T2"] [-jN]
# Unless --no-gather, it first unpacks the Debian packages that the GPU
# machine lacks (gathered on a CPU machine by scripts/gather_cuda_deps.sh into
# DIR, default deps/) into DIR/root, never into /.
set -euo pipefail
cd "$(dirname "$0")/.."
gather=1 deps=deps build=build-cuda torch_prefix= configure_only=0 targets= jobs=$(nproc)
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-gather) gather=0 ;;
    --deps) deps=$2; shift ;;
    --build-dir) build=$2; shift ;;
    --torch-prefix) torch_prefix=$2; shift ;;
    --configure-only) configure_only=1 ;;
    --targets) targets=$2; shift ;;
    -j*) jobs=${1#-j} ;;
    *) echo "build_cuda.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
py=${PYTHON:-python3}
abi=1
if [[ -z $torch_prefix ]]; then
  torch_prefix=$($py -c 'import torch; print(torch.utils.cmake_prefix_path)')
  abi=$($py -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
  echo "build_cuda: torch $($py -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)'), C++11 ABI $abi"
  # PyTorch's own NCCL (nvidia-nccl-cu*), so that DFC and LibTorch share one libnccl.
  nccl=$($py -c 'import os, nvidia.nccl as n; print(os.path.dirname(n.__file__) if n.__file__ else list(n.__path__)[0])' \
         2>/dev/null || true)
  [[ -n $nccl && -f $nccl/include/nccl.h ]] && export NCCL_ROOT=$nccl
  torch_include=$($py -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))')
fi
if [[ $abi != 1 ]]; then
  # Debian's gRPC, Protobuf and Abseil are built with the C++11 ABI.
  echo "build_cuda: this LibTorch uses the pre-C++11 ABI; the Debian libraries cannot link with it" >&2
  exit 1
fi
prefix=$torch_prefix
if [[ $gather == 1 ]]; then
  root=$(cd "$deps" && pwd)/root
  mkdir -p "$root"
  shopt -s nullglob
  debs=("$deps"/*.deb)
  (( ${#debs[@]} )) || { echo "build_cuda: no .deb files in $deps (run scripts/gather_cuda_deps.sh)" >&2; exit 2; }
  for deb in "${debs[@]}"; do dpkg -x "$deb" "$root"; done
  # LibTorch was compiled against the gloo it ships; never mix in Debian's headers.
  if [[ -n ${torch_include:-} && -d $torch_include/gloo ]]; then rm -rf "$root/usr/include/gloo"; fi
  lib=$root/usr/lib/x86_64-linux-gnu
  prefix="$prefix;$root/usr;$lib/cmake"
  export PKG_CONFIG_PATH=$lib/pkgconfig
  export LD_LIBRARY_PATH=$lib:${LD_LIBRARY_PATH:-}
  export PATH=$root/usr/bin:$PATH
  # Debian's CMake configs name absolute /usr paths; point them at the prefix.
  grep -rl --include='*.cmake' '"/usr/' "$lib/cmake" 2>/dev/null | xargs -r sed -i "s|\"/usr/|\"$root/usr/|g"
  # Likewise the pkg-config files (re2.pc names libdir=/usr/...; gRPC finds re2 through it).
  grep -rlE '^(prefix|libdir|includedir)=/usr' "$lib/pkgconfig" "$root/usr/share/pkgconfig" 2>/dev/null |
    xargs -r sed -i -E "s#^(prefix|libdir|includedir)=/usr#\1=$root/usr#"
  # Debian keeps some configuration headers in the multiarch folder (jconfig.h:
  # JPEG_LIB_VERSION 62); without it first, the GPU machine's own
  # /usr/include/x86_64-linux-gnu/jconfig.h (libjpeg 8) is compiled against
  # the gathered libjpeg.so.62 ("Wrong JPEG library version", seen on the H100).
  export CFLAGS="-isystem $root/usr/include/x86_64-linux-gnu ${CFLAGS:-}"
  export CXXFLAGS="-isystem $root/usr/include/x86_64-linux-gnu ${CXXFLAGS:-}"
  extra=(-DCMAKE_INCLUDE_PATH="$root/usr/include;$root/usr/include/hdf5/serial"
         -DCMAKE_LIBRARY_PATH="$lib;$lib/hdf5/serial" -DCMAKE_PROGRAM_PATH="$root/usr/bin")
fi
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" "${extra[@]}" \
  -DDFC_BUILD_TESTS=ON
[[ $configure_only == 1 ]] && exit 0
# shellcheck disable=SC2086
ninja -C "$build" -k 0 -j "$jobs" $targets
