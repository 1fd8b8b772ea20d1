// EnterSandbox and Subprocess's limits on real processes: each test forks a
// child that confines itself and then tries what a parser taken over by a
// hostile file would try; the parent checks what the kernel let through.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "common/sandbox.h"
#include "common/subprocess.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

struct ChildResult {
  int exit_code = -1;
  int signal = 0;
  std::map<std::string, std::string> lines;  // "name value" lines the child wrote
};

// Runs `body` in a forked child; it reports through `out`, one "name value" line per check.
ChildResult InChild(const std::function<void(std::FILE* out)>& body) {
  int fds[2];
  EXPECT_EQ(::pipe(fds), 0);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(fds[0]);
    std::FILE* out = ::fdopen(fds[1], "w");
    body(out);
    std::fflush(out);
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fds[0], buf, sizeof(buf))) > 0;) text.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  ChildResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  std::istringstream in(text);
  for (std::string name, value; in >> name && std::getline(in >> std::ws, value);) r.lines[name] = value;
  return r;
}

// "ok", or the errno's name a failed call left.
std::string Outcome(long result) {
  if (result >= 0) return "ok";
  switch (errno) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOSYS: return "ENOSYS";
    default: return std::strerror(errno);
  }
}

// Expects each named check of the child to have ended as given.
void ExpectOutcomes(const ChildResult& r, const std::map<std::string, std::string>& want) {
  for (const auto& [name, outcome] : want) {
    const auto it = r.lines.find(name);
    EXPECT_EQ(it != r.lines.end() ? it->second : "(not run)", outcome) << name;
  }
}

// Tries to start a process, then a program: last, since an exec that
// worked would end the child's checks.
void TryForkThenExec(std::FILE* out) {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  std::fprintf(out, "fork %s\n", Outcome(child).c_str());
  std::fflush(out);
  char* const args[] = {const_cast<char*>("/bin/true"), nullptr};
  std::fprintf(out, "exec %s\n", Outcome(::execve("/bin/true", args, nullptr)).c_str());
}

TEST(SandboxTest, AConfinedProcessReachesOnlyWhatItsPolicyAllows) {
  testing::TempDir dir;
  ASSERT_EQ(::mkdir(dir.Join("in").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir(dir.Join("out").c_str(), 0755), 0);
  testing::WriteFileOrDie(dir.Join("in/upload"), "weights");
  testing::WriteFileOrDie(dir.Join("secret"), "token");
  ChildResult r = InChild([&](std::FILE* out) {
    SandboxPolicy policy;
    policy.read_paths = {dir.Join("in/upload"), "/usr", "/lib"};
    policy.write_dirs = {dir.Join("out")};
    auto report = EnterSandbox(policy);
    std::fprintf(out, "sandbox %s\n", report.ok() ? "ok" : std::string(report.status().message()).c_str());
    if (!report.ok()) return;
    std::fprintf(out, "landlock %d\n", report->landlock_abi);
    std::fprintf(out, "read_upload %s\n", Outcome(::open(dir.Join("in/upload").c_str(), O_RDONLY)).c_str());
    std::fprintf(out, "read_secret %s\n", Outcome(::open(dir.Join("secret").c_str(), O_RDONLY)).c_str());
    std::fprintf(out, "write_secret %s\n", Outcome(::open(dir.Join("secret").c_str(), O_WRONLY)).c_str());
    std::fprintf(out, "create_beside_upload %s\n",
                 Outcome(::open(dir.Join("in/x").c_str(), O_WRONLY | O_CREAT, 0644)).c_str());
    std::fprintf(out, "create_in_out %s\n",
                 Outcome(::open(dir.Join("out/tmp").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644)).c_str());
    std::fprintf(out, "rename_in_out %s\n",
                 Outcome(::rename(dir.Join("out/tmp").c_str(), dir.Join("out/weights").c_str())).c_str());
    std::fprintf(out, "mkdir_in_out %s\n", Outcome(::mkdir(dir.Join("out/sub").c_str(), 0755)).c_str());
    std::fprintf(out, "fifo_in_out %s\n", Outcome(::mkfifo(dir.Join("out/fifo").c_str(), 0644)).c_str());
    std::fprintf(out, "symlink_in_out %s\n",
                 Outcome(::symlink(dir.Join("secret").c_str(), dir.Join("out/link").c_str())).c_str());
    std::fprintf(out, "inet_socket %s\n", Outcome(::socket(AF_INET, SOCK_STREAM, 0)).c_str());
    std::fprintf(out, "unix_socket %s\n", Outcome(::socket(AF_UNIX, SOCK_STREAM, 0)).c_str());
    std::fprintf(out, "kill_parent %s\n", Outcome(::kill(::getppid(), 0)).c_str());
    std::fprintf(out, "tgkill_parent %s\n", Outcome(::syscall(SYS_tgkill, ::getppid(), ::getppid(), 0)).c_str());
    std::fprintf(out, "ptrace_parent %s\n", Outcome(::ptrace(PTRACE_ATTACH, ::getppid(), nullptr, nullptr)).c_str());
    bool ran = false;
    std::thread([&] { ran = true; }).join();
    std::fprintf(out, "thread %s\n", ran ? "ok" : "no");
    TryForkThenExec(out);
  });
  ASSERT_EQ(r.lines["sandbox"], "ok");
  EXPECT_EQ(r.exit_code, 0);
  // seccomp: no network, no programs, no processes, nothing done to the
  // parent; threads still start (clone3 refused, clone with CLONE_THREAD allowed).
  ExpectOutcomes(r, {{"inet_socket", "EPERM"}, {"unix_socket", "EPERM"}, {"exec", "EPERM"}, {"fork", "EPERM"},
                     {"kill_parent", "EPERM"}, {"tgkill_parent", "EPERM"}, {"ptrace_parent", "EPERM"},
                     {"thread", "ok"}});
  // Landlock: the upload is read, the output directory written, nothing else.
  EXPECT_EQ(r.lines["read_upload"], "ok");
  EXPECT_EQ(r.lines["create_in_out"], "ok");
  EXPECT_EQ(r.lines["rename_in_out"], "ok");
  if (std::stoi(r.lines["landlock"]) == 0) GTEST_SKIP() << "this kernel has no Landlock: files are not confined";
  EXPECT_EQ(r.lines["read_secret"], "EACCES");
  EXPECT_EQ(r.lines["write_secret"], "EACCES");
  EXPECT_EQ(r.lines["create_beside_upload"], "EACCES");
  // In the output directory: folders and regular files, nothing an
  // unconfined reader of it could be made to wait on (a FIFO) or follow.
  EXPECT_EQ(r.lines["mkdir_in_out"], "ok");
  EXPECT_EQ(r.lines["fifo_in_out"], "EACCES");
  EXPECT_EQ(r.lines["symlink_in_out"], "EACCES");
}

// A training rank's policy: its process group needs sockets, so they stay;
// programs, processes and files outside its paths are still refused.
TEST(SandboxTest, AllowNetworkKeepsSocketsAndNothingElse) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("secret"), "token");
  ChildResult r = InChild([&](std::FILE* out) {
    SandboxPolicy policy;
    policy.read_paths = {"/usr", "/lib"};
    policy.allow_network = true;
    auto report = EnterSandbox(policy);
    std::fprintf(out, "sandbox %s\n", report.ok() ? "ok" : std::string(report.status().message()).c_str());
    if (!report.ok()) return;
    std::fprintf(out, "landlock %d\n", report->landlock_abi);
    const int listener = ::socket(AF_INET, SOCK_STREAM, 0);
    std::fprintf(out, "inet_socket %s\n", Outcome(listener).c_str());
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::fprintf(out, "bind %s\n", Outcome(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr))).c_str());
    std::fprintf(out, "listen %s\n", Outcome(::listen(listener, 1)).c_str());
    socklen_t len = sizeof(addr);
    ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
    const int client = ::socket(AF_INET, SOCK_STREAM, 0);
    std::fprintf(out, "connect %s\n", Outcome(::connect(client, reinterpret_cast<sockaddr*>(&addr), len)).c_str());
    std::fprintf(out, "accept %s\n", Outcome(::accept(listener, nullptr, nullptr)).c_str());
    std::fprintf(out, "read_secret %s\n", Outcome(::open(dir.Join("secret").c_str(), O_RDONLY)).c_str());
    TryForkThenExec(out);
  });
  ASSERT_EQ(r.lines["sandbox"], "ok");
  ExpectOutcomes(r, {{"inet_socket", "ok"}, {"bind", "ok"}, {"listen", "ok"}, {"connect", "ok"}, {"accept", "ok"},
                     {"fork", "EPERM"}, {"exec", "EPERM"}});
  if (std::stoi(r.lines["landlock"]) == 0) GTEST_SKIP() << "this kernel has no Landlock: files are not confined";
  EXPECT_EQ(r.lines["read_secret"], "EACCES");
}

TEST(SandboxTest, AConfinedProcessThatAbortsDiesOfItsOwnSignal) {
  // abort() signals the process itself (tgkill to its own pid): what a
  // crashing parser does, and what the server reports.
  ChildResult r = InChild([](std::FILE* out) {
    auto report = EnterSandbox({});
    std::fprintf(out, "sandbox %s\n", report.ok() ? "ok" : std::string(report.status().message()).c_str());
    std::fflush(out);
    if (report.ok()) std::abort();
  });
  EXPECT_EQ(r.lines["sandbox"], "ok");
  EXPECT_EQ(r.signal, SIGABRT);
}

TEST(SandboxTest, AProcessWithThreadsIsRefused) {
  ChildResult r = InChild([](std::FILE* out) {
    std::thread sleeper([] { std::this_thread::sleep_for(std::chrono::milliseconds(500)); });
    auto report = EnterSandbox({});
    std::fprintf(out, "sandbox %s\n", report.ok() ? "ok" : std::string(report.status().message()).c_str());
    sleeper.join();
  });
  EXPECT_NE(r.lines["sandbox"].find("the process has 2 threads"), std::string::npos) << r.lines["sandbox"];
}

TEST(SubprocessTest, LimitsEnvironmentAndDescriptorsReachTheChildAsAsked) {
  testing::TempDir dir;
  int leak[2];
  ASSERT_EQ(::pipe(leak), 0);  // inheritable: no O_CLOEXEC
  const std::string script = "ulimit -v; ulimit -t; ulimit -c; [ -e /proc/self/fd/" + std::to_string(leak[0]) +
                             " ] && echo fd-open || echo fd-closed; echo \"env=[$FOO:$DFC_SECRET]\"";
  auto run = [&](bool confined) {
    const std::string log = dir.Join(confined ? "confined.log" : "plain.log");
    SubprocessOptions o;
    // Confined, stdin is /dev/null: `read` returns at once with nothing.
    o.argv = {"/bin/sh", "-c", confined ? script + "; read x; echo \"stdin=[$x]\"" : script};
    o.log_path = log;
    if (confined) {
      o.rlimits = {{RLIMIT_AS, uint64_t{512} << 20}, {RLIMIT_CPU, 7}, {RLIMIT_CORE, 0}};
      o.close_other_fds = true;
      o.inherit_env = false;
      o.env = {"FOO=bar"};
    }
    auto p = Subprocess::Start(o);
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok()) return std::string();
    EXPECT_EQ(p->Wait(), 0);
    return testing::ReadFileOrDie(log);
  };
  ::setenv("DFC_SECRET", "s3cret", 1);
  ::setenv("FOO", "inherited", 1);
  const std::string confined = run(true);
  const std::string plain = run(false);
  ::unsetenv("DFC_SECRET");
  ::close(leak[0]);
  ::close(leak[1]);
  EXPECT_EQ(confined, "524288\n7\n0\nfd-closed\nenv=[bar:]\nstdin=[]\n");
  // Without the options the same script sees the parent's descriptor and environment.
  EXPECT_NE(plain.find("fd-open"), std::string::npos) << plain;
  EXPECT_NE(plain.find("env=[inherited:s3cret]"), std::string::npos) << plain;
}

}  // namespace
}  // namespace dfc
