#!/usr/bin/env bash
# On a Debian 12 CPU machine: downloads (never installs) the .deb files the
# CUDA build needs and the GPU machine lacks, into deps/ (compressed: they
# must fit the 64 MiB that travels to the GPU machine). Only OpenCV's core,
# imgproc and imgcodecs are taken, not the all-modules -dev package.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p deps
cd deps
pkgs=(libgrpc++-dev libgrpc++1.51 libgrpc-dev libgrpc29 protobuf-compiler-grpc libprotobuf-dev libprotobuf32
      protobuf-compiler libprotoc32 libabsl-dev libabsl20220623 libsqlite3-dev libsqlite3-0 libhdf5-dev
      libhdf5-103-1 libsz2 libaec0 libcli11-dev nlohmann-json3-dev libgloo-dev
      libopencv-core-dev libopencv-core406 libopencv-imgproc-dev libopencv-imgproc406
      libopencv-imgcodecs-dev libopencv-imgcodecs406 libc-ares2 libre2-9 libssl-dev libtcmalloc-minimal4)
apt-get download "${pkgs[@]}"
du -ch ./*.deb | tail -1
