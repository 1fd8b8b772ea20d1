#!/usr/bin/env bash
# Before spending a GPU session's minutes: does DFC's LibTorch code still
# compile against a current PyTorch? The CPU machines have Debian 12's
# LibTorch 1.13; the GPU machine has a PyTorch 2.x wheel (../shared/GPU.md),
# whose C++ API differs in places. This downloads (never installs) Debian
# unstable's libtorch-dev (headers only, ~3 MB, whatever version unstable
# has now), unpacks it under build/torch-next/ and compiles every
# translation unit of build/ that includes LibTorch against those headers,
# syntax only (no objects, no linking: unstable's libraries need a newer
# glibc). The CUDA graph and NCCL code is checked against the CUDA toolkit's
# headers as in the CPU build. A PyTorch that needs C++20 (2.14 does) is
# checked as C++20; the GPU machine's 2.11 still builds as C++17.
# Needs a configured build/ (scripts/test.sh or cmake) and network access to
# deb.debian.org.
#   scripts/check_torch_api.sh [-jN] [FILE-REGEX]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
[[ ${1:-} == -j* ]] && { jobs=${1#-j}; shift; }
only=${1:-.}
[[ -f build/compile_commands.json ]] || { echo "check_torch_api.sh: configure build/ first (scripts/test.sh)" >&2; exit 2; }
dir=build/torch-next
mkdir -p "$dir"
mirror=http://deb.debian.org/debian
curl -fsS -m 120 -o "$dir/Packages.xz" "$mirror/dists/sid/main/binary-amd64/Packages.xz"
deb=$(xz -dc "$dir/Packages.xz" | awk '/^Package: /{p = $2} p == "libtorch-dev" && /^Filename: /{print $2}')
[[ -n $deb ]] || { echo "check_torch_api.sh: no libtorch-dev in Debian unstable's index" >&2; exit 1; }
name=$(basename "$deb")
if [[ ! -f $dir/$name ]]; then
  rm -rf "$dir"/*.deb "$dir/root"
  curl -fsS -m 600 -o "$dir/$name.part" "$mirror/$deb" && mv "$dir/$name.part" "$dir/$name"
fi
[[ -d $dir/root ]] || dpkg -x "$dir/$name" "$dir/root"
echo "LibTorch headers: $name"
/usr/bin/python3 - "$PWD/$dir/root/usr/include" "$jobs" "$only" <<'PY'
import concurrent.futures, json, re, shlex, subprocess, sys
inc, jobs, only = sys.argv[1], int(sys.argv[2]), re.compile(sys.argv[3])
old_api = "/usr/include/torch/csrc/api/include"
# C++20 where the headers use its requires-clauses (PyTorch 2.14 does).
tensor_base = open(inc + "/ATen/core/TensorBase.h").read()
std = "-std=gnu++20" if re.search(r"^\s*requires ", tensor_base, re.M) else None
units = []
for entry in json.load(open("build/compile_commands.json")):
    if old_api not in entry["command"] or not only.search(entry["file"]):
        continue
    args, out, i = shlex.split(entry["command"]), [], 0
    while i < len(args):
        a = args[i]
        if a == "-include" and "cmake_pch" in args[i + 1] or a == "-o":
            i += 2
            continue
        if a == "-isystem" and args[i + 1] == old_api:
            out += ["-isystem", inc, "-isystem", inc + "/torch/csrc/api/include"]
            i += 2
            continue
        if a == "-c":
            a = "-fsyntax-only"
        elif a.startswith("-O"):
            a = "-O0"
        elif a.startswith("-std=") and std:
            a = std
        out.append(a)
        i += 1
    units.append((entry["file"], out, entry["directory"]))

def check(unit):
    name, args, cwd = unit
    p = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    return name, p.returncode, p.stderr

failed = 0
with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
    for name, rc, err in pool.map(check, units):
        print(("ok    " if rc == 0 else "FAILED"), name, flush=True)
        if rc:
            failed += 1
            print("\n".join([l for l in err.splitlines() if "error" in l][:20]), flush=True)
print(f"{len(units) - failed} of {len(units)} LibTorch translation units compile against these headers"
      + (f" ({std[5:]})" if std else ""))
sys.exit(1 if failed else 0)
PY
