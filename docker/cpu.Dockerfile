# DFC on Debian 12, CPU (Gloo). Build from the repository root:
#   scripts/build_images.sh --cpu          (podman, as tested), or
#   docker build -f docker/cpu.Dockerfile -t REGISTRY/dfc:cpu .
# The build stage runs the same scripts/setup.sh as the README and CI, for
# the three programs only: packages first (a layer of their own), then the
# sources, compiled with a ccache kept between builds.
FROM debian:12 AS build
RUN apt-get update -q && apt-get install -y -q --no-install-recommends ca-certificates sudo && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/setup.sh scripts/setup.sh
RUN DFC_SETUP_PACKAGES_ONLY=1 scripts/setup.sh --binaries-only
COPY . .
# scripts/build_images.sh mounts this machine's ccache and names it here, so
# the stage reuses what scripts/setup.sh compiled; otherwise the cache mount.
ARG DFC_CCACHE_DIR=/root/.cache/ccache
RUN --mount=type=cache,target=/root/.cache/ccache \
    CCACHE_DIR=$DFC_CCACHE_DIR scripts/setup.sh --binaries-only && strip build/bin/dfc build/bin/dfc-torch build/bin/dfc-coordinator build/bin/dfc-worker build/bin/dfc-server build/bin/dfc-decode

# Runtime: the shared libraries the binaries link, nothing to build with.
FROM debian:12
RUN apt-get update -q && apt-get install -y -q --no-install-recommends \
      libtorch1.13 libgrpc++1.51 libprotobuf32 libsqlite3-0 libhdf5-103-1 \
      libjpeg62-turbo libpng16-16 libopencv-imgproc406 libopencv-core406 \
      libabsl20220623 libtcmalloc-minimal4 libopenblas0-openmp libgloo0 \
      libprometheus-cpp-core1.0 libcpp-httplib0.11 \
    && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/cache/debconf/*-old \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin dfc
COPY --from=build /src/build/bin/dfc /src/build/bin/dfc-torch /src/build/bin/dfc-coordinator /src/build/bin/dfc-worker /src/build/bin/dfc-server /src/build/bin/dfc-decode /opt/dfc/bin/
ENV PATH=/opt/dfc/bin:$PATH
USER 10001:10001
ENTRYPOINT ["/opt/dfc/bin/dfc"]
