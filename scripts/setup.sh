#!/usr/bin/env bash
# Installs DFC's Debian 12 packages (when missing) and builds it into build/.
# Usage: scripts/setup.sh [--with-bench]   (bench adds Debian's python3-torch)
#        scripts/setup.sh --binaries-only  (the four programs alone, for the
#                                           container image's build stage)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  cmake ninja-build g++ pkg-config ccache
  libtorch-dev libhdf5-dev libabsl-dev libcli11-dev nlohmann-json3-dev
  libopencv-core-dev libopencv-imgproc-dev libjpeg62-turbo-dev libpng-dev
  libgtest-dev libgmock-dev libtcmalloc-minimal4 libgloo-dev libopenblas0-openmp
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libsqlite3-dev
  prometheus-cpp-dev libcpp-httplib-dev libssl-dev
  python3-h5py python3-pil python3-numpy
)
binaries_only=0
if [[ "${1:-}" == "--with-bench" ]]; then packages+=(python3-torch); fi
if [[ "${1:-}" == "--binaries-only" ]]; then
  binaries_only=1
  packages=("${packages[@]/libgtest-dev}")
  packages=("${packages[@]/libgmock-dev}")
  packages=("${packages[@]/python3-h5py}")
  packages=("${packages[@]/python3-pil}")
  packages=("${packages[@]/python3-numpy}")
else
  # kubectl renders the Kubernetes manifests in a test; any recent one will do.
  command -v kubectl >/dev/null || packages+=(kubernetes-client)
  # clang checks the locks (-Wthread-safety) in a test and builds the fuzz
  # targets with its libFuzzer runtime; GCC builds everything else.
  packages+=(clang libclang-rt-14-dev)
  # The operator tests: curl scrapes, Debian's Prometheus server scrapes, and
  # chromium (headless) renders the dashboard.
  packages+=(curl prometheus chromium)
  # libfaketime steps a test coordinator's wall clock.
  packages+=(libfaketime)
  command -v npm >/dev/null || packages+=(nodejs npm)
fi

missing=()
for p in "${packages[@]}"; do
  [[ -n $p ]] || continue
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The image's package layer installs before the sources arrive (cached apart).
if [[ -n ${DFC_SETUP_PACKAGES_ONLY:-} ]]; then exit 0; fi

# LibTorch translation units need ~1.5 GiB each: one job per 2 GiB of memory.
jobs=$(( $(nproc) < 8 ? $(nproc) : 8 ))
if [[ $binaries_only == 1 ]]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDFC_BUILD_TESTS=OFF
  ninja -C build -j "$jobs" dfc dfc-coordinator dfc-worker dfc-server
  exit 0
fi

# The manifest test's schema validator (kubernetes-models), pinned by the lock file.
if [[ ! -d tests/k8s/node_modules ]]; then
  (cd tests/k8s && npm ci --no-audit --no-fund --loglevel=error)
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
ninja -C build -j "$jobs"
