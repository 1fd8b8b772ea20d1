#!/usr/bin/env bash
# Fuzzes the readers of untrusted bytes that need no LibTorch: the image
# decoder (tests/fuzz/image_fuzz.cc: JPEG, PNG, BMP, PPM, as dfc-server
# receives them), a shard directory as the loader reads it
# (tests/fuzz/shard_fuzz.cc) and the served-weights parser dfc-server runs on
# what its weights converter wrote (tests/fuzz/weights_fuzz.cc). libFuzzer with AddressSanitizer and UBSan,
# built with clang (Debian's clang and libclang-rt-14-dev). Seeds: every
# format written by Pillow, the shared MesoNet samples when present, and
# shard directories made by `dfc shard` (build/bin/dfc must exist).
#   scripts/fuzz.sh [--seconds N | --runs N] [--target image|shard|weights|all] [--build-dir DIR] [--dfc PATH]
# --seconds: a time budget per target (default 120; for finding bugs);
# --runs: a fixed number of inputs from a fixed seed (the ctest: the same
# inputs every time). An input that crashes is left in DIR/crashes/ and the
# script exits 1; add it to a unit test once it is fixed.
set -euo pipefail
cd "$(dirname "$0")/.."
src=$PWD
seconds=120 runs="" target=all dir=build-fuzz dfc=$src/build/bin/dfc
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds=$2; shift ;;
    --runs) runs=$2; shift ;;
    --target) target=$2; shift ;;
    --build-dir) dir=$2; shift ;;
    --dfc) dfc=$2; shift ;;
    *) echo "fuzz.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
cxx=$(command -v clang++-14 || command -v clang++ || true)
[[ -n $cxx ]] || { echo "fuzz.sh: clang++ not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 2; }
[[ -x $dfc ]] || { echo "fuzz.sh: $dfc not found (build first: scripts/test.sh or ninja -C build dfc)" >&2; exit 2; }
mkdir -p "$dir/crashes"
dir=$(cd "$dir" && pwd)

flags=(-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I"$src")
absl=$(pkg-config --cflags --libs absl_status absl_statusor absl_strings absl_str_format absl_synchronization)
build() {  # name sources...
  local name=$1
  shift
  # shellcheck disable=SC2086
  "$cxx" "${flags[@]}" "$@" $absl -ljpeg -lpng -o "$dir/$name.part" && mv "$dir/$name.part" "$dir/$name"
}

seeds_image() {
  local s=$dir/seeds-image
  rm -rf "$s" && mkdir -p "$s"
  /usr/bin/python3 - "$s" <<'PY'
import random, sys
from PIL import Image
out = sys.argv[1]
rnd = random.Random(1)
rgb = Image.new("RGB", (7, 5))
rgb.putdata([tuple(rnd.randrange(256) for _ in range(3)) for _ in range(35)])
for mode in ("RGB", "L", "RGBA", "P", "1"):
    im = rgb.convert(mode)
    for ext in ("png", "bmp", "ppm", "jpg"):
        try:
            im.save(f"{out}/{mode}.{ext}")
        except (OSError, ValueError):
            pass  # a mode the format cannot hold
rgb.save(f"{out}/progressive.jpg", progressive=True)
PY
  local shared=${DFC_SHARED_DIR:-$src/../shared}
  cp "$shared"/data/mesonet-samples/*/*.jpg "$s"/ 2>/dev/null || true
}

seeds_shard() {
  local s=$dir/seeds-shard work=$dir/seed-work
  rm -rf "$s" "$work" && mkdir -p "$s" "$work"
  "$dfc" synth --out "$work/src" --count 6 --seed 2 --image-size 32 --threads 1 >/dev/null
  for format in encoded rgb8; do
    for split in 0 0.34; do
      local d=$work/$format-$split
      "$dfc" shard --src "$work/src" --out "$d" --image-size 8 --format $format --validation-split $split \
        --threads 1 >/dev/null
      # The harness's input: manifest.json, a "--shard--" line, then the first shard's bytes.
      local first
      first=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["shards"][0]["file"])' \
        "$d/manifest.json")
      { cat "$d/manifest.json"; printf '\n--shard--\n'; cat "$d/$first"; } >"$s/$format-$split"
    done
  done
  rm -rf "$work"
}

seeds_weights() {  # file bodies (the harness appends the checksum)
  local s=$dir/seeds-weights
  rm -rf "$s" && mkdir -p "$s"
  /usr/bin/python3 - "$s" <<'PY'
import struct, sys
def tensor(name, dtype, dims):
    size = (4 if dtype == 0 else 8)
    for d in dims:
        size *= d
    return (struct.pack("<H", len(name)) + name + struct.pack("<BB", dtype, len(dims)) +
            b"".join(struct.pack("<q", d) for d in dims) + bytes(range(256)) * (size // 256) + bytes(size % 256))
def body(arch, epoch, tensors):
    return b"DFCWTS01" + struct.pack("<H", len(arch)) + arch + struct.pack("<qI", epoch, len(tensors)) + b"".join(tensors)
out = sys.argv[1]
open(f"{out}/empty", "wb").write(body(b"meso4", 0, []))
open(f"{out}/conv-bn", "wb").write(body(b"mesoinception4", 3, [
    tensor(b"conv1.weight", 0, [8, 3, 3, 3]), tensor(b"bn1.running_mean", 0, [8]),
    tensor(b"bn1.num_batches_tracked", 1, [])]))
PY
}

run() {  # name max_len
  local name=$1 max_len=$2 corpus=$dir/corpus-$1
  mkdir -p "$corpus"
  local budget=(-max_total_time="$seconds") what="$seconds s"
  # A fixed number of runs starts from the seeds alone, so it tries the same inputs every time.
  [[ -n $runs ]] && { budget=(-runs="$runs" -seed=1); what="$runs runs from the seeds"; rm -rf "$corpus"; mkdir -p "$corpus"; }
  echo "== $name ($what)"
  if ! (cd "$dir/crashes" && "$dir/${name}_fuzz" "${budget[@]}" -max_len="$max_len" -rss_limit_mb=2048 -timeout=20 \
      -print_final_stats=1 "$corpus" "$dir/seeds-$name" 2>"$dir/$name.log"); then
    grep -E "ERROR|runtime error|SUMMARY|Test unit written" "$dir/$name.log" | head -8
    echo "fuzz.sh: $name: a crash; input in $dir/crashes, log in $dir/$name.log" >&2
    return 1
  fi
  grep -E "stat::number_of_executed_units|cov:" "$dir/$name.log" | tail -2
}

status=0
if [[ $target == image || $target == all ]]; then
  build image_fuzz tests/fuzz/image_fuzz.cc data_shards/image_codec.cc
  seeds_image
  run image 65536 || status=1
fi
if [[ $target == shard || $target == all ]]; then
  build shard_fuzz tests/fuzz/shard_fuzz.cc data_shards/shard_format.cc data_shards/batch_loader.cc \
    data_shards/shuffle.cc data_shards/image_codec.cc data_shards/dataset_scan.cc common/atomic_file.cc common/utf8.cc \
    common/checksum.cc common/dir_lock.cc
  seeds_shard
  run shard 16384 || status=1
fi
if [[ $target == weights || $target == all ]]; then
  build weights_fuzz tests/fuzz/weights_fuzz.cc common/weights_file.cc common/checksum.cc
  seeds_weights
  run weights 4096 || status=1
fi
exit $status
