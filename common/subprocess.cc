#include "common/subprocess.h"

#include <unistd.h>

#include <cstdio>

namespace dfc {

std::string SelfExecutable() {
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  return n > 0 ? std::string(exe, static_cast<size_t>(n)) : "/proc/self/exe";
}

pid_t SpawnProcess(const std::vector<std::string>& args, const std::string& log_path, bool new_session) {
  std::vector<char*> cargs;
  for (const auto& a : args) cargs.push_back(const_cast<char*>(a.c_str()));
  cargs.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid != 0) return pid;
  if (new_session) ::setsid();
  if (!log_path.empty()) {
    if (FILE* f = std::fopen(log_path.c_str(), "a")) {
      ::dup2(::fileno(f), 1);
      ::dup2(::fileno(f), 2);
    }
  }
  ::execv(cargs[0], cargs.data());
  ::_exit(127);
}

}  // namespace dfc
