#ifndef DFC_COMMON_SANDBOX_H_
#define DFC_COMMON_SANDBOX_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dfc {

// What a confined process may still touch in the file system.
struct SandboxPolicy {
  std::vector<std::string> read_paths;  // files, or directories read beneath (missing ones are skipped)
  std::vector<std::string> write_dirs;  // directories it may create, write, rename and remove files beneath
  bool allow_network = false;           // keep sockets (a training rank's process group)
};

// The layers EnterSandbox put in force.
struct SandboxReport {
  bool seccomp = false;
  int landlock_abi = 0;  // 0: the kernel has no Landlock (files are not confined)
  std::string Describe() const;
};

// Confines the calling process for good, before it parses untrusted input
// (dfc-server's weights converter, dfc-worker's CPU ranks). Call it while
// the process has one thread: a process with more is refused (the filters
// bind the calling thread and the threads it starts later).
//  - No new privileges; a seccomp filter refuses (EPERM) sockets (unless
//    policy.allow_network), exec,
//    process creation other than threads, signals to other processes,
//    ptrace and cross-process memory access, namespaces and mounts,
//    io_uring, bpf, perf events, keyrings and userfaultfd.
//  - Landlock (Linux 5.13+): files are opened for reading only beneath
//    policy.read_paths, and written, created or removed only beneath
//    policy.write_dirs, where only regular files and folders may be made
//    (no FIFO, socket, device node or symbolic link); nothing may be
//    executed.
// Fails when seccomp cannot be installed; a kernel without Landlock is
// reported (landlock_abi 0), not an error.
absl::StatusOr<SandboxReport> EnterSandbox(const SandboxPolicy& policy);

// What a confined parser may read besides its input: the system libraries
// (some load late), its own /proc entries, the CPU information its thread
// pools size themselves by, and /dev/null.
std::vector<std::string> SystemReadPaths();

// Sets RLIMIT_AS to what the process maps now (its binary and libraries; a
// CUDA LibTorch maps gigabytes before anything is read) plus `extra_bytes`,
// the budget of what it may still allocate, and makes the process the
// kernel's first choice when memory runs out anyway (oom_score_adj 1000):
// several parsers within their budgets can still exhaust a pod's memory
// together, and then one of them goes, not the server holding every client's
// stream. A confined parser calls it first (before EnterSandbox: /proc is
// not writable after), so that a hostile input ends in a failed allocation
// or in the death of its own process.
absl::Status LimitMemory(int64_t extra_bytes);

}  // namespace dfc

#endif  // DFC_COMMON_SANDBOX_H_
