#ifndef DFC_COMMON_SUBPROCESS_H_
#define DFC_COMMON_SUBPROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace dfc {

// The absolute path of the running executable (to re-launch it or find its
// sibling binaries); "/proc/self/exe" if it cannot be read.
std::string SelfExecutable();
// The program `name` in the running executable's directory (dfc-worker
// beside dfc, dfc-decode beside dfc-server).
std::string SiblingExecutable(const std::string& name);

// A TCP port on 127.0.0.1 that was free a moment ago (0 if none could be had).
int PickFreePort();

struct SubprocessOptions {
  std::vector<std::string> argv;  // argv[0]: the program's path (no shell, no PATH search)
  std::vector<std::string> env;   // NAME=VALUE added to (or replacing in) the inherited environment
  bool inherit_env = true;        // false: the child's environment is `env` alone
  std::string log_path;           // stdout and stderr appended here; empty: inherited
  bool new_session = false;       // leave the caller's session (a daemon that outlives the terminal)
  bool die_with_parent = true;    // SIGKILL when the parent dies (PR_SET_PDEATHSIG)
  // setrlimit(resource, {value, value}) in the child before exec (RLIMIT_AS,
  // RLIMIT_CPU, ...); one that cannot be set makes the child exit 127.
  std::vector<std::pair<int, uint64_t>> rlimits;
  // The child keeps only stdout and stderr: stdin reads /dev/null and every
  // other inherited descriptor is closed (for a child that must not reach
  // the parent's sockets and files).
  bool close_other_fds = false;
  // >= 0: the child's stdin and stdout are this descriptor (one end of a
  // socketpair the parent talks to it over) instead of /dev/null and the
  // parent's stdout; stderr is still log_path or inherited.
  int stdio_fd = -1;
};

// The start of a child that confines itself and then parses untrusted input
// (dfc-server's weights converter and image decoders): `argv`, every other
// descriptor closed, an environment of OMP_NUM_THREADS=1, PATH and the
// caller's LD_LIBRARY_PATH alone (no token or credential of the caller's
// reaches it), no core dumps. Callers add their own limits.
SubprocessOptions UntrustedInputChildOptions(std::vector<std::string> argv);

// "SIGSEGV" for 11 ("SIG" and the number when the name is unknown).
std::string SignalName(int sig);

// One child process: spawn, poll, terminate with a grace period, wait. The
// one way DFC starts processes (worker ranks, the rank launcher, `cluster up`,
// the tests). A Subprocess that still runs when destroyed is killed (SIGKILL)
// and reaped, unless Release()d.
class Subprocess {
 public:
  // Fails when fork fails; an exec failure makes the child exit 127.
  static absl::StatusOr<Subprocess> Start(const SubprocessOptions& options);

  Subprocess() = default;
  Subprocess(Subprocess&& other) noexcept { *this = std::move(other); }
  Subprocess& operator=(Subprocess&& other) noexcept;
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;
  ~Subprocess();

  pid_t pid() const { return pid_; }
  // Started and not yet seen to exit.
  bool running() const { return pid_ > 0 && !exited_; }
  // Reaps without blocking; true once the process has exited. Sends the
  // SIGKILL that Terminate scheduled once its grace period is over.
  bool Poll();
  // After exit: the exit code, or 128 + the signal that ended it.
  int exit_code() const { return exit_code_; }
  // After exit: the signal that ended it, 0 if it exited.
  int term_signal() const { return term_signal_; }
  bool Signal(int sig);
  // SIGTERM now (with SIGCONT, so that a stopped process acts on it) and
  // SIGKILL once `grace` has passed (at the next Poll or in Wait). A repeated
  // call never moves that moment later.
  void Terminate(std::chrono::milliseconds grace);
  // Blocks until it exits; returns exit_code().
  int Wait();
  // Terminate(grace), then Wait().
  int Stop(std::chrono::milliseconds grace);
  // Leaves the process running (a daemon); returns its pid and forgets it.
  pid_t Release();

 private:
  void Reaped(int status);

  pid_t pid_ = -1;
  bool exited_ = false;
  int exit_code_ = 0;
  int term_signal_ = 0;
  bool terminating_ = false;
  std::chrono::steady_clock::time_point kill_at_ = std::chrono::steady_clock::time_point::max();
};

// The start time of process `pid` (field 22 of /proc/PID/stat, clock ticks
// since boot), or 0 if there is no such process. A pid with another start
// time than recorded is another process: the pid was reused.
unsigned long long ProcessStartTime(pid_t pid);

}  // namespace dfc

#endif  // DFC_COMMON_SUBPROCESS_H_
