#include "training/rank_launcher.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/random_token.h"
#include "common/stop_signal.h"
#include "common/subprocess.h"

namespace dfc {

std::string RendezvousKeyFromEnvironment() {
  const char* key = std::getenv(kRendezvousKeyEnv);
  return key != nullptr ? key : "";
}

absl::Status LaunchRanks(const RankLaunchOptions& o) {
  if (o.argv.empty()) return absl::InvalidArgumentError("no command to launch");
  if (o.world_size < 1 || o.world_size > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("--world-size must be in [1, 1024], got ", o.world_size));
  }
  const int port = o.master_port > 0 ? o.master_port : PickFreePort();
  if (port <= 0) return absl::UnavailableError("no free loopback port for the rendezvous store");
  const std::string key = RandomHexToken();
  std::vector<Subprocess> ranks;
  for (int r = 0; r < o.world_size; ++r) {
    SubprocessOptions so;
    so.argv = o.argv;
    so.env.push_back(absl::StrCat(kRendezvousKeyEnv, "=", key));
    so.argv.insert(so.argv.end(), {"--rank", std::to_string(r), "--master-port", std::to_string(port)});
    auto p = Subprocess::Start(so);
    if (!p.ok()) return absl::ResourceExhaustedError(absl::StrCat("cannot start rank ", r, ": ", p.status().message()));
    ranks.push_back(std::move(*p));  // the ones started so far are killed if we return
  }
  absl::Status first;
  bool stopping = false, asked = false;
  for (size_t left = ranks.size(); left > 0;) {
    if (!asked && StopSignal() != 0) {
      asked = true;
      for (Subprocess& p : ranks) p.Terminate(o.stop_grace);
    }
    left = 0;
    for (size_t r = 0; r < ranks.size(); ++r) {
      Subprocess& p = ranks[r];
      const bool was_running = p.running();
      if (!was_running || !p.Poll()) {
        left += was_running;
        continue;
      }
      if (p.exit_code() == 0 || stopping) continue;
      first = absl::AbortedError(p.term_signal() == 0
                                     ? absl::StrCat("rank ", r, " exited with status ", p.exit_code())
                                     : absl::StrCat("rank ", r, " was killed by signal ", p.term_signal()));
      // A dead peer never leaves the others hanging.
      stopping = true;
      for (Subprocess& other : ranks) other.Terminate(o.kill_grace);
    }
    if (left > 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Each rank said how it stopped (rank 0: where it saved the step).
  if (asked) {
    return absl::CancelledError(absl::StrCat("stopped by ", StopSignalName(), ", passed on to the ranks as SIGTERM"));
  }
  return first;
}

}  // namespace dfc
