#!/usr/bin/env python3
"""Compiles every source that takes a lock with clang's thread-safety analysis
as errors (-Wthread-safety -Werror=thread-safety), using the flags CMake
recorded in BUILD/compile_commands.json (GCC builds the binaries; clang only
checks). Usage: scripts/thread_safety.py BUILD_DIR [CLANG]. Exit 0: clean."""
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

FOLDERS = ("coordinator/", "serving/", "worker/", "training/", "data_shards/", "common/", "models/")
LOCKING = re.compile(r"absl::MutexLock|absl::Mutex\b|\.Lock\(\)|ABSL_GUARDED_BY")
# GCC-only flags and the precompiled header (clang cannot read GCC's .gch).
DROP_PREFIX = ("-Winvalid-pch", "-fno-gnu-unique", "-fconcepts", "-Wno-maybe-uninitialized", "-fstack-clash")


def main():
    build = sys.argv[1]
    clang = sys.argv[2] if len(sys.argv) > 2 else "clang++"
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(build, "compile_commands.json")) as f:
        commands = json.load(f)
    jobs = []
    for c in commands:
        rel = os.path.relpath(c["file"], src)
        if not rel.startswith(FOLDERS) or not rel.endswith(".cc"):
            continue
        with open(c["file"]) as f:
            if not LOCKING.search(f.read()):
                continue
        args = shlex.split(c["command"]) if "command" in c else list(c["arguments"])
        out = [clang]
        skip = False
        for i, a in enumerate(args[1:], 1):
            if skip:
                skip = False
                continue
            if a in ("-o", "-MF", "-MT", "-MQ"):
                skip = True
                continue
            if a == "-include" and "cmake_pch" in args[i + 1]:
                skip = True
                continue
            if a in ("-c", "-MD") or a.startswith(DROP_PREFIX) or a.endswith(".o"):
                continue
            out.append(a)
        out += ["-fsyntax-only", "-Wthread-safety", "-Werror=thread-safety", "-Wno-unknown-warning-option",
                "-Wno-unused-command-line-argument", "-Wno-ignored-optimization-argument"]
        jobs.append((rel, out, c["directory"]))
    if not jobs:
        print("thread_safety: no locking sources found", file=sys.stderr)
        return 1

    def run(job):
        rel, cmd, cwd = job
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        return rel, p.returncode, p.stderr

    failed = 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for rel, rc, err in pool.map(run, jobs):
            safety = [l for l in err.splitlines() if "thread-safety" in l or "-Wthread-safety" in l]
            print(f"{'ok  ' if rc == 0 else 'FAIL'} {rel}")
            if rc != 0:
                failed += 1
                print("\n".join(safety) if safety else err[-4000:])
    print(f"{len(jobs) - failed} of {len(jobs)} locking sources pass clang -Wthread-safety")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
