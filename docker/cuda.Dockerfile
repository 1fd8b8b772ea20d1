# DFC with CUDA (NCCL). LibTorch comes from a PyTorch wheel's libtorch (the
# same source as ../shared/GPU.md's machine); scripts/build_cuda.sh builds
# against it. Build from the repository root:
#   docker build -f docker/cuda.Dockerfile -t REGISTRY/dfc:cuda .
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.5.1
RUN apt-get update -q && apt-get install -y -q --no-install-recommends python3-pip cmake ninja-build g++ \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev libsqlite3-dev libhdf5-dev libabsl-dev \
      libopencv-dev nlohmann-json3-dev libgtest-dev libgloo-dev libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/* \
    && pip3 install --no-cache-dir "torch==${TORCH_VERSION}"
WORKDIR /src
COPY . .
RUN scripts/build_cuda.sh --no-gather

FROM ${CUDA_RUNTIME_IMAGE}
RUN apt-get update -q && apt-get install -y -q --no-install-recommends python3-pip libgrpc++1 libsqlite3-0 \
      libhdf5-103 libopencv-imgcodecs4.5d libopencv-imgproc4.5d libopencv-core4.5d libtcmalloc-minimal4 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin dfc
COPY --from=build /usr/local/lib/python3.10/dist-packages/torch/lib /opt/dfc/lib
COPY --from=build /src/build-cuda/bin/dfc /src/build-cuda/bin/dfc-coordinator /src/build-cuda/bin/dfc-worker /opt/dfc/bin/
ENV PATH=/opt/dfc/bin:$PATH LD_LIBRARY_PATH=/opt/dfc/lib
USER 10001:10001
ENTRYPOINT ["/opt/dfc/bin/dfc"]
