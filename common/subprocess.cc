#include "common/subprocess.h"

#include <sstream>

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/atomic_file.h"

extern char** environ;

namespace dfc {

std::string SelfExecutable() {
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  return n > 0 ? std::string(exe, static_cast<size_t>(n)) : "/proc/self/exe";
}

std::string SiblingExecutable(const std::string& name) {
  const std::string self = SelfExecutable();
  const size_t slash = self.rfind('/');
  return (slash == std::string::npos ? std::string(".") : self.substr(0, slash)) + "/" + name;
}

int PickFreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

SubprocessOptions UntrustedInputChildOptions(std::vector<std::string> argv) {
  SubprocessOptions so;
  so.argv = std::move(argv);
  so.close_other_fds = true;
  so.inherit_env = false;
  so.env = {"OMP_NUM_THREADS=1", "PATH=/usr/bin:/bin"};
  if (const char* ld = std::getenv("LD_LIBRARY_PATH")) so.env.push_back(absl::StrCat("LD_LIBRARY_PATH=", ld));
  so.rlimits = {{RLIMIT_CORE, 0}};
  return so;
}

std::string SignalName(int sig) {
  const char* name = ::sigabbrev_np(sig);
  return absl::StrCat("SIG", name != nullptr ? name : std::to_string(sig));
}

absl::StatusOr<Subprocess> Subprocess::Start(const SubprocessOptions& o) {
  if (o.argv.empty()) return absl::InvalidArgumentError("subprocess: no program");
  // Everything the child needs is built before fork (only async-signal-safe calls after it).
  std::vector<char*> cargs;
  for (const auto& a : o.argv) cargs.push_back(const_cast<char*>(a.c_str()));
  cargs.push_back(nullptr);
  std::vector<std::string> env_strings;
  for (char** e = environ; o.inherit_env && *e != nullptr; ++e) {
    const std::string kv = *e;
    const std::string name = kv.substr(0, kv.find('='));
    bool replaced = false;
    for (const auto& add : o.env) replaced |= add.substr(0, add.find('=')) == name;
    if (!replaced) env_strings.push_back(kv);
  }
  env_strings.insert(env_strings.end(), o.env.begin(), o.env.end());
  std::vector<char*> cenv;
  for (auto& e : env_strings) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return absl::ResourceExhaustedError(absl::StrCat("cannot start ", o.argv[0], ": ", std::strerror(errno)));
  if (pid == 0) {
    if (o.die_with_parent) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);  // the parent died before prctl
    }
    if (o.new_session) ::setsid();
    if (!o.log_path.empty()) {
      const int fd = ::open(o.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd >= 0) {
        ::dup2(fd, STDOUT_FILENO);
        ::dup2(fd, STDERR_FILENO);
      }
    }
    if (o.stdio_fd >= 0) {
      if (::dup2(o.stdio_fd, STDIN_FILENO) < 0 || ::dup2(o.stdio_fd, STDOUT_FILENO) < 0) ::_exit(127);
    }
    if (o.close_other_fds) {
      if (o.stdio_fd < 0) {  // stdin reads /dev/null
        const int null = ::open("/dev/null", O_RDONLY);
        if (null < 0 || ::dup2(null, STDIN_FILENO) < 0) ::_exit(127);
      }
      if (::syscall(SYS_close_range, 3u, ~0u, 0u) != 0) {  // before Linux 5.9: one by one
        rlimit nofile{};
        ::getrlimit(RLIMIT_NOFILE, &nofile);
        const int top = nofile.rlim_cur > 65536 ? 65536 : static_cast<int>(nofile.rlim_cur);
        for (int fd = 3; fd < top; ++fd) ::close(fd);
      }
    }
    for (const auto& [resource, value] : o.rlimits) {
      const rlimit limit{static_cast<rlim_t>(value), static_cast<rlim_t>(value)};
      if (::setrlimit(resource, &limit) != 0) ::_exit(127);
    }
    ::execve(cargs[0], cargs.data(), cenv.data());
    ::_exit(127);
  }
  Subprocess p;
  p.pid_ = pid;
  return p;
}

Subprocess& Subprocess::operator=(Subprocess&& other) noexcept {
  if (this != &other) {
    if (running()) {
      ::kill(pid_, SIGKILL);
      Wait();
    }
    pid_ = std::exchange(other.pid_, -1);
    exited_ = other.exited_;
    exit_code_ = other.exit_code_;
    term_signal_ = other.term_signal_;
    terminating_ = other.terminating_;
    kill_at_ = other.kill_at_;
  }
  return *this;
}

Subprocess::~Subprocess() {
  if (running()) {
    ::kill(pid_, SIGKILL);
    Wait();
  }
}

void Subprocess::Reaped(int status) {
  exited_ = true;
  if (WIFSIGNALED(status)) {
    term_signal_ = WTERMSIG(status);
    exit_code_ = 128 + term_signal_;
  } else {
    exit_code_ = WEXITSTATUS(status);
  }
}

bool Subprocess::Poll() {
  if (!running()) return exited_;
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    Reaped(status);
    return true;
  }
  if (r < 0 && errno == ECHILD) {  // reaped elsewhere: no status to be had
    exited_ = true;
    exit_code_ = 127;
    return true;
  }
  if (terminating_ && std::chrono::steady_clock::now() >= kill_at_) ::kill(pid_, SIGKILL);  // ignored SIGTERM, or stopped
  return false;
}

bool Subprocess::Signal(int sig) { return running() && ::kill(pid_, sig) == 0; }

void Subprocess::Terminate(std::chrono::milliseconds grace) {
  if (!running() || terminating_) return;
  terminating_ = true;
  kill_at_ = std::chrono::steady_clock::now() + grace;
  ::kill(pid_, grace.count() <= 0 ? SIGKILL : SIGTERM);
  // A stopped process (SIGSTOP, a debugger) acts on SIGTERM only once it
  // runs: let it, so that it shuts down cleanly instead of waiting for SIGKILL.
  if (grace.count() > 0) ::kill(pid_, SIGCONT);
}

int Subprocess::Wait() {
  while (running()) {
    if (!terminating_) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, 0);
      if (r == pid_) Reaped(status);
      else if (r < 0 && errno != EINTR) Poll();
      continue;
    }
    if (!Poll()) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return exit_code_;
}

int Subprocess::Stop(std::chrono::milliseconds grace) {
  Terminate(grace);
  return Wait();
}

pid_t Subprocess::Release() { return std::exchange(pid_, -1); }

}  // namespace dfc

namespace dfc {

unsigned long long ProcessStartTime(pid_t pid) {
  const absl::StatusOr<std::string> stat = ReadFirstLine("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!stat.ok()) return 0;
  const std::string& line = *stat;
  // The command name (field 2) is in parentheses and may hold spaces.
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 2));
  std::string field;
  // Fields 3..21, then 22 (starttime).
  for (int i = 3; i <= 21 && rest >> field; ++i) {
  }
  unsigned long long start = 0;
  rest >> start;
  return start;
}

}  // namespace dfc
