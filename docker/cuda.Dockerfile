# DFC with CUDA (NCCL), built the way ../shared/GPU.md's machine builds it:
# LibTorch is the one inside a PyTorch CUDA wheel, the Debian 12 libraries the
# build needs come from scripts/gather_cuda_deps.sh, and scripts/build_cuda.sh
# unpacks them into a prefix and builds. Build from the repository root:
#   docker build -f docker/cuda.Dockerfile -t REGISTRY/dfc:cuda .
# On the project's machines only the `deps` stage can be built
# (scripts/build_images.sh --cuda-stages): the nvidia/cuda base and the PyTorch
# index are out of their reach. CI runs both scripts -- tests/cuda_build_test.cc
# -- with a CPU LibTorch standing in, and the same build has run on an H100.
ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04

# 1. The Debian 12 packages, with the same script the GPU machine's build uses.
FROM debian:12 AS deps
# objdump (binutils): the script checks that the packages close over their libraries.
RUN apt-get update -q && apt-get install -y -q --no-install-recommends binutils
WORKDIR /src
COPY scripts/gather_cuda_deps.sh scripts/
RUN scripts/gather_cuda_deps.sh --out /deps

# 2. Build: CUDA toolkit + PyTorch (its LibTorch, NCCL and cuDNN) + build_cuda.sh.
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU} AS build
ARG TORCH_VERSION=2.11.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
RUN apt-get update -q && apt-get install -y -q --no-install-recommends python3-venv cmake ninja-build g++ \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/torch \
    && /opt/torch/bin/pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
WORKDIR /src
COPY . .
COPY --from=deps /deps /src/deps
RUN PYTHON=/opt/torch/bin/python scripts/build_cuda.sh --deps deps \
    && strip build-cuda/bin/dfc build-cuda/bin/dfc-torch build-cuda/bin/dfc-coordinator build-cuda/bin/dfc-worker build-cuda/bin/dfc-server build-cuda/bin/dfc-decode \
    && mkdir -p /opt/dfc/deps \
    && cp -a deps/root/usr/lib/x86_64-linux-gnu/*.so.* /opt/dfc/deps/

# 3. Runtime: the binaries, LibTorch with the NVIDIA libraries it loads
#    (kept in their site-packages layout, which LibTorch's RPATHs expect) and
#    the Debian runtime libraries; no compiler, no headers.
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU}
COPY --from=build /opt/torch/lib/python3.12/site-packages/torch/lib /opt/dfc/site-packages/torch/lib
COPY --from=build /opt/torch/lib/python3.12/site-packages/nvidia /opt/dfc/site-packages/nvidia
COPY --from=build /opt/dfc/deps /opt/dfc/deps
COPY --from=build /src/build-cuda/bin/dfc /src/build-cuda/bin/dfc-torch /src/build-cuda/bin/dfc-coordinator /src/build-cuda/bin/dfc-worker /src/build-cuda/bin/dfc-server /src/build-cuda/bin/dfc-decode /opt/dfc/bin/
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin dfc
ENV PATH=/opt/dfc/bin:$PATH \
    LD_LIBRARY_PATH=/opt/dfc/site-packages/torch/lib:/opt/dfc/site-packages/nvidia/nccl/lib:/opt/dfc/deps
USER 10001:10001
ENTRYPOINT ["/opt/dfc/bin/dfc"]
