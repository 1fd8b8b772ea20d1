#include "common/sandbox.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/landlock.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace dfc {
namespace {

#if defined(__x86_64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
constexpr uint32_t kAuditArch = AUDIT_ARCH_AARCH64;
#else
#error "EnterSandbox knows the system calls of x86_64 and aarch64 only"
#endif

// Landlock file-system rights by ABI version (the kernel refuses bits it
// does not know, so only those of its version are handled).
constexpr uint64_t kFsAbi1 = (1ULL << 13) - 1;  // EXECUTE .. MAKE_SYM
constexpr uint64_t kFsRefer = 1ULL << 13;       // ABI 2
constexpr uint64_t kFsTruncate = 1ULL << 14;    // ABI 3
constexpr uint64_t kFileRights = LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE |
                                 LANDLOCK_ACCESS_FS_READ_FILE | kFsTruncate;

std::string Errno(const char* what) { return absl::StrCat(what, ": ", std::strerror(errno)); }

int Threads() {
  DIR* d = ::opendir("/proc/self/task");
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
  ::closedir(d);
  return n;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Landlock's ABI version, 0 without it.
int LandlockAbi() {
  const long v = ::syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION);
  return v > 0 ? static_cast<int>(v) : 0;
}

absl::Status AddRule(int ruleset, const std::string& path, uint64_t rights, uint64_t handled) {
  Fd fd(::open(path.c_str(), O_PATH | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return absl::OkStatus();  // nothing there to allow
    return absl::InternalError(Errno(absl::StrCat("sandbox: '", path, "'").c_str()));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return absl::InternalError(Errno("sandbox: fstat"));
  if (!S_ISDIR(st.st_mode)) rights &= kFileRights;
  landlock_path_beneath_attr attr{};
  attr.allowed_access = rights & handled;
  attr.parent_fd = fd.get();
  if (attr.allowed_access == 0) return absl::OkStatus();
  if (::syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &attr, 0) != 0) {
    return absl::InternalError(Errno(absl::StrCat("sandbox: landlock rule for '", path, "'").c_str()));
  }
  return absl::OkStatus();
}

absl::Status RestrictFiles(const SandboxPolicy& policy, int abi) {
  uint64_t handled = kFsAbi1;
  if (abi >= 2) handled |= kFsRefer;
  if (abi >= 3) handled |= kFsTruncate;
  landlock_ruleset_attr attr{};
  attr.handled_access_fs = handled;
  Fd ruleset(static_cast<int>(::syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0)));
  if (ruleset.get() < 0) return absl::InternalError(Errno("sandbox: landlock_create_ruleset"));
  const uint64_t read = LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;
  for (const std::string& p : policy.read_paths) {
    if (absl::Status st = AddRule(ruleset.get(), p, read, handled); !st.ok()) return st;
  }
  // Beneath write_dirs: regular files and folders only. Not executables, and
  // no FIFO, socket, device or symbolic link that an unconfined reader of
  // the same folder (the worker, the coordinator, dfc-server) could be led
  // to wait on or through.
  const uint64_t write = handled & ~static_cast<uint64_t>(LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_MAKE_CHAR |
                                                          LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO |
                                                          LANDLOCK_ACCESS_FS_MAKE_BLOCK | LANDLOCK_ACCESS_FS_MAKE_SYM);
  for (const std::string& p : policy.write_dirs) {
    if (absl::Status st = AddRule(ruleset.get(), p, write, handled); !st.ok()) return st;
  }
  if (::syscall(SYS_landlock_restrict_self, ruleset.get(), 0) != 0) {
    return absl::InternalError(Errno("sandbox: landlock_restrict_self"));
  }
  return absl::OkStatus();
}

sock_filter Stmt(uint16_t code, uint32_t k) { return BPF_STMT(code, k); }
sock_filter Jump(uint16_t code, uint32_t k, uint8_t jt, uint8_t jf) { return BPF_JUMP(code, k, jt, jf); }

absl::Status InstallSeccomp(bool allow_network) {
  constexpr uint32_t kDeny = SECCOMP_RET_ERRNO | EPERM;
  constexpr uint32_t kAllow = SECCOMP_RET_ALLOW;
  const uint32_t kNr = offsetof(seccomp_data, nr);
  const uint32_t kArg0 = offsetof(seccomp_data, args);  // its low 32 bits (little-endian)
  const int network[] = {SYS_socket, SYS_socketpair, SYS_connect, SYS_bind, SYS_listen, SYS_accept, SYS_accept4};
  const int denied[] = {
    SYS_execve, SYS_execveat,
#ifdef SYS_fork
    SYS_fork,
#endif
#ifdef SYS_vfork
    SYS_vfork,
#endif
    SYS_ptrace, SYS_process_vm_readv, SYS_process_vm_writev, SYS_kcmp,
    SYS_kill, SYS_tkill, SYS_rt_sigqueueinfo, SYS_rt_tgsigqueueinfo,
    SYS_pidfd_open, SYS_pidfd_send_signal, SYS_pidfd_getfd,
    SYS_unshare, SYS_setns, SYS_mount, SYS_umount2, SYS_pivot_root, SYS_chroot,
    SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register,
    SYS_bpf, SYS_perf_event_open, SYS_userfaultfd, SYS_keyctl, SYS_add_key, SYS_request_key,
  };
  std::vector<sock_filter> f;
  f.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)));
  f.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, kAuditArch, 1, 0));
  f.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS));  // another ABI (32-bit calls)
  f.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, kNr));
#if defined(__x86_64__)
  f.push_back(Jump(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, 0, 1));  // x32 calls
  f.push_back(Stmt(BPF_RET | BPF_K, kDeny));
#endif
  std::vector<int> deny(std::begin(denied), std::end(denied));
  if (!allow_network) deny.insert(deny.end(), std::begin(network), std::end(network));
  for (int nr : deny) {
    f.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(nr), 0, 1));
    f.push_back(Stmt(BPF_RET | BPF_K, kDeny));
  }
  // clone3's flags sit behind a pointer: ENOSYS makes glibc start threads with clone.
  f.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1));
  f.push_back(Stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS));
  // clone: threads only (CLONE_THREAD), no new processes.
  f.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 0, 4));
  f.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, kArg0));
  f.push_back(Jump(BPF_JMP | BPF_JSET | BPF_K, CLONE_THREAD, 0, 1));
  f.push_back(Stmt(BPF_RET | BPF_K, kAllow));
  f.push_back(Stmt(BPF_RET | BPF_K, kDeny));
  // tgkill: this process's threads only (abort() raises SIGABRT with it).
  f.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, SYS_tgkill, 0, 4));
  f.push_back(Stmt(BPF_LD | BPF_W | BPF_ABS, kArg0));
  f.push_back(Jump(BPF_JMP | BPF_JEQ | BPF_K, static_cast<uint32_t>(::getpid()), 0, 1));
  f.push_back(Stmt(BPF_RET | BPF_K, kAllow));
  f.push_back(Stmt(BPF_RET | BPF_K, kDeny));
  f.push_back(Stmt(BPF_RET | BPF_K, kAllow));
  sock_fprog prog{};
  prog.len = static_cast<unsigned short>(f.size());
  prog.filter = f.data();
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0) {
    return absl::InternalError(Errno("sandbox: seccomp"));
  }
  return absl::OkStatus();
}

}  // namespace

std::string SandboxReport::Describe() const {
  return absl::StrCat(seccomp ? "seccomp" : "no seccomp", ", ",
                      landlock_abi > 0 ? absl::StrCat("Landlock ABI ", landlock_abi)
                                       : "no Landlock (files unconfined)");
}

absl::StatusOr<SandboxReport> EnterSandbox(const SandboxPolicy& policy) {
  if (const int n = Threads(); n != 1) {
    return absl::FailedPreconditionError(absl::StrCat("sandbox: the process has ", n, " threads; enter it with one"));
  }
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return absl::InternalError(Errno("sandbox: no_new_privs"));
  SandboxReport report;
  report.landlock_abi = LandlockAbi();
  if (report.landlock_abi > 0) {
    if (absl::Status st = RestrictFiles(policy, report.landlock_abi); !st.ok()) return st;
  }
  if (absl::Status st = InstallSeccomp(policy.allow_network); !st.ok()) return st;
  report.seccomp = true;
  return report;
}

std::vector<std::string> SystemReadPaths() {
  return {"/usr", "/lib", "/lib64", "/lib32", "/proc/self", "/proc/cpuinfo", "/sys/devices/system/cpu", "/dev/null"};
}

absl::Status LimitMemory(int64_t extra_bytes) {
  int64_t mapped_kb = -1;
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);) {
    if (absl::StartsWith(line, "VmSize:") &&
        absl::SimpleAtoi(absl::StripSuffix(absl::StripAsciiWhitespace(line.substr(7)), " kB"), &mapped_kb)) {
      break;
    }
  }
  if (mapped_kb < 0) return absl::InternalError("sandbox: cannot read the process's size from /proc/self/status");
  const auto budget = static_cast<rlim_t>(mapped_kb * 1024 + extra_bytes);
  const rlimit as{budget, budget};
  if (::setrlimit(RLIMIT_AS, &as) != 0) return absl::InternalError(Errno("sandbox: setrlimit(RLIMIT_AS)"));
  // Raising one's own score needs no privilege.
  const int fd = ::open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
  const bool written = fd >= 0 && ::write(fd, "1000", 4) == 4;
  const absl::Status error = written ? absl::OkStatus() : absl::InternalError(Errno("sandbox: /proc/self/oom_score_adj"));
  if (fd >= 0) ::close(fd);
  return error;
}

}  // namespace dfc
