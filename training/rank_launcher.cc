#include "training/rank_launcher.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/subprocess.h"

namespace dfc {

absl::Status LaunchRanks(const RankLaunchOptions& o) {
  if (o.argv.empty()) return absl::InvalidArgumentError("no command to launch");
  if (o.world_size < 1 || o.world_size > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("--world-size must be in [1, 1024], got ", o.world_size));
  }
  const int port = o.master_port > 0 ? o.master_port : PickFreePort();
  if (port <= 0) return absl::UnavailableError("no free loopback port for the rendezvous store");
  std::map<pid_t, int> rank_of;
  for (int r = 0; r < o.world_size; ++r) {
    std::vector<std::string> args = o.argv;
    args.insert(args.end(), {"--rank", std::to_string(r), "--master-port", std::to_string(port)});
    std::vector<char*> cargs;
    for (auto& a : args) cargs.push_back(a.data());
    cargs.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) {
      for (auto& [p, _] : rank_of) ::kill(p, SIGKILL);
      return absl::ResourceExhaustedError(absl::StrCat("cannot start rank ", r, ": ", std::strerror(errno)));
    }
    if (pid == 0) {
      ::execv(cargs[0], cargs.data());
      std::fprintf(stderr, "cannot exec %s: %s\n", cargs[0], std::strerror(errno));
      ::_exit(127);
    }
    rank_of[pid] = r;
  }
  absl::Status first;
  bool stopping = false;
  auto deadline = std::chrono::steady_clock::time_point::max();
  while (!rank_of.empty()) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, stopping ? WNOHANG : 0);
    if (pid < 0 && errno == EINTR) continue;
    if (pid < 0) break;
    if (pid == 0) {  // stopping, nobody exited yet
      if (std::chrono::steady_clock::now() > deadline) {
        for (auto& [p, _] : rank_of) ::kill(p, SIGKILL);
        deadline = std::chrono::steady_clock::time_point::max();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    auto it = rank_of.find(pid);
    if (it == rank_of.end()) continue;
    const int rank = it->second;
    rank_of.erase(it);
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (!ok && first.ok() && !stopping) {
      first = absl::AbortedError(WIFEXITED(status)
                                     ? absl::StrCat("rank ", rank, " exited with status ", WEXITSTATUS(status))
                                     : absl::StrCat("rank ", rank, " was killed by signal ", WTERMSIG(status)));
    }
    if (!ok && !stopping) {
      stopping = true;
      for (auto& [p, _] : rank_of) ::kill(p, SIGTERM);
      deadline = std::chrono::steady_clock::now() + o.kill_grace;
    }
  }
  return first;
}

}  // namespace dfc
