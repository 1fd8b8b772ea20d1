#!/usr/bin/env bash
# On a Debian 12 CPU machine: downloads (never installs) the .deb files the
# CUDA build needs and a GPU machine with only CUDA + PyTorch lacks, into
# deps/ (or --out DIR). They stay compressed: everything that travels to the
# GPU machine must fit in 64 MiB, which this script checks. Images are
# decoded with libjpeg-turbo and libpng; OpenCV contributes only core and
# imgproc (for `dfc synth`), with the libraries they load. Anything else the
# unpacked libraries need must be a base-system library
# (tests/cuda_build_test.cc checks the closure).
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
      libtbb12 liblapack3 libblas3 libgfortran5 libglx0 libglvnd0 libx11-6 libx11-data libxcb1 libxau6
      libxdmcp6 libbsd0 libmd0
      libjpeg62-turbo libjpeg62-turbo-dev libpng16-16 libpng-dev zlib1g-dev
      libc-ares2 libc-ares-dev libre2-9 libre2-dev libssl-dev libssl3 libtcmalloc-minimal4 libquadmath0 libzstd1
      libcurl4 libbrotli1 libcom-err2 libdb5.3 libffi8 libgmp10 libgnutls30 libgssapi-krb5-2 libhogweed6
      libidn2-0 libk5crypto3 libkeyutils1 libkrb5-3 libkrb5support0 libldap-2.5-0 libnettle8 libnghttp2-14
      libp11-kit0 libpsl5 librtmp1 libsasl2-2 libsasl2-modules-db libssh2-1 libtasn1-6 libunistring2
      prometheus-cpp-dev libprometheus-cpp-core1.0 libcpp-httplib-dev libcpp-httplib0.11 libbrotli-dev)
apt-get download "${pkgs[@]}"
bytes=$(cat ./*.deb | wc -c)
echo "gather_cuda_deps: ${#pkgs[@]} packages, $((bytes / 1024 / 1024)) MiB in $(pwd)"
if (( bytes > 64 * 1024 * 1024 )); then
  echo "gather_cuda_deps: over the 64 MiB that can travel to the GPU machine" >&2
  exit 1
fi
# Closure: every library an unpacked library needs is unpacked too, or is a
# base-system library (glibc, libstdc++, libgcc, zlib, OpenSSL 3).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for deb in ./*.deb; do dpkg -x "$deb" "$tmp"; done
base='^(libc|libm|libmvec|libresolv|libutil|libanl|libstdc\+\+|libgcc_s|libz|libpthread|libdl|librt|ld-linux-x86-64|libssl|libcrypto)\.so'
have=$(find "$tmp" -name '*.so*' -printf '%f\n' | sort -u)
missing=$(find "$tmp" -name '*.so*' -type f -exec objdump -p {} \; 2>/dev/null | awk '/NEEDED/ {print $2}' | sort -u |
          grep -vxF "$have" | grep -vE "$base" || true)
if [[ -n $missing ]]; then
  echo "gather_cuda_deps: needed but not gathered: $(echo $missing)" >&2
  exit 1
fi
echo "gather_cuda_deps: closure complete (beyond glibc, libstdc++, libgcc, zlib, OpenSSL 3)"
