#!/usr/bin/env bash
# Builds DFC's container images with Debian's podman, on this machine, with
# no registry: the Debian 12 base image is made here with debootstrap (from
# the mirror this machine's apt uses, read at run time) and imported under
# the name the Dockerfiles' FROM lines use (debian:12).
#   scripts/build_images.sh [--cpu] [--cuda-stages]     (default: --cpu)
# --cpu          dfc:cpu from docker/cpu.Dockerfile as written; prints its size
#                and its largest layer.
# --cuda-stages  the stages of docker/cuda.Dockerfile that need no nvidia/cuda
#                base (see docs/DEPLOY.md).
# podman settings: docker/containers.conf (runc, no rlimits), host network.
set -euo pipefail
cd "$(dirname "$0")/.."
cpu=0 cuda=0
for a in "$@"; do
  case "$a" in
    --cpu) cpu=1 ;;
    --cuda-stages) cuda=1 ;;
    *) echo "build_images.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
(( cpu || cuda )) || cpu=1
export CONTAINERS_CONF=$PWD/docker/containers.conf
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends podman runc debootstrap
fi
t0=$(date +%s)

# The base image: Debian 12 minbase, made once, with the apt sources of
# Debian's own image (bookworm, bookworm-updates, bookworm-security), so the
# images' packages get Debian's security updates. A base made before it had
# them (debootstrap writes bookworm alone) is made again.
if podman image exists docker.io/library/debian:12 &&
   ! podman run --rm --network=none docker.io/library/debian:12 \
       grep -rqs bookworm-security /etc/apt/sources.list /etc/apt/sources.list.d; then
  echo "build_images: the base image debian:12 has no security updates in its apt sources; making it again"
  podman rmi -f docker.io/library/debian:12 >/dev/null
fi
if ! podman image exists docker.io/library/debian:12; then
  mirror="" security=""
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    [[ -n $mirror ]] || mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$f")
    [[ -n $security ]] || security=$(awk '/^URIs:/ && $2 ~ /security/ {print $2; exit}' "$f")
  done
  if [[ -f /etc/apt/sources.list ]]; then
    [[ -n $mirror ]] || mirror=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list)
    [[ -n $security ]] || security=$(awk '$1 == "deb" && $3 ~ /^bookworm-security$/ {print $2; exit}' /etc/apt/sources.list)
  fi
  [[ -n $mirror ]] || { echo "build_images.sh: no Debian mirror in this machine's apt sources" >&2; exit 1; }
  security=${security:-http://deb.debian.org/debian-security}
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  echo "build_images: debootstrap bookworm from $mirror (security updates from $security)"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
  rm -f "$root"/etc/apt/sources.list
  cat > "$root"/etc/apt/sources.list.d/debian.sources <<EOS
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
  # As Debian's own image: no downloaded packages, no package lists.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | podman import - docker.io/library/debian:12 >/dev/null
  echo "build_images: base image debian:12 in $(( $(date +%s) - t0 )) s"
fi

if (( cpu )); then
  t1=$(date +%s)
  # The build stage compiles with this machine's ccache (mounted for its RUN
  # steps): after scripts/setup.sh it compiles nothing again.
  ccache_args=()
  if command -v ccache >/dev/null; then
    cache_dir=$(ccache -k cache_dir)
    mkdir -p "$cache_dir"
    ccache_args=(--volume "$cache_dir:/var/cache/dfc-ccache" --build-arg DFC_CCACHE_DIR=/var/cache/dfc-ccache)
  fi
  podman build --network=host --pull=never "${ccache_args[@]}" -f docker/cpu.Dockerfile -t localhost/dfc:cpu .
  echo "build_images: dfc:cpu built in $(( $(date +%s) - t1 )) s"
  size=$(podman image inspect localhost/dfc:cpu --format '{{.Size}}')
  # podman prints layer sizes as "1.19 GB" (decimal units).
  largest=$(podman history --format '{{.Size}}|{{.CreatedBy}}' localhost/dfc:cpu |
            awk -F'|' '{ split($1, a, " "); m = a[2] == "GB" ? 1e9 : a[2] == "MB" ? 1e6 : a[2] == "kB" ? 1e3 : 1;
                         printf "%d|%s\n", a[1] * m, $2 }' | sort -t'|' -k1,1n | tail -1)
  echo "build_images: dfc:cpu is $(( size / 1000000 )) MB; largest layer $(( ${largest%%|*} / 1000000 )) MB: ${largest#*|}" |
    cut -c1-200
fi
if (( cuda )); then
  t1=$(date +%s)
  podman build --network=host --pull=never -f docker/cuda.Dockerfile --target deps -t localhost/dfc:cuda-deps .
  echo "build_images: the CUDA image's dependency stage built in $(( $(date +%s) - t1 )) s"
fi
