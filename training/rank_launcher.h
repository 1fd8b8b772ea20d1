#ifndef DFC_TRAINING_RANK_LAUNCHER_H_
#define DFC_TRAINING_RANK_LAUNCHER_H_

#include <chrono>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace dfc {

// The environment variable that hands each rank its attempt's rendezvous key
// (CollectiveOptions::rendezvous_key). Not the command line: every local user
// can read that in /proc, while a process's environment is its owner's.
inline constexpr char kRendezvousKeyEnv[] = "DFC_RENDEZVOUS_KEY";
// This process's rendezvous key, as its launcher or worker handed it over;
// "" when none did.
std::string RendezvousKeyFromEnvironment();

// Options for LaunchRanks.
struct RankLaunchOptions {
  // The command of rank r is `argv` followed by "--rank r --master-port P";
  // every rank gets the same fresh rendezvous key in kRendezvousKeyEnv.
  std::vector<std::string> argv;
  int world_size = 2;
  int master_port = 0;  // 0: pick a free loopback port
  // After the first rank fails, the others get SIGTERM, and SIGKILL this long
  // after: a dead peer never leaves ranks hanging.
  std::chrono::milliseconds kill_grace{5000};
  // Once this process is asked to stop (common/stop_signal.h: it catches the
  // signals), the ranks get SIGTERM, to finish their step and save it, and
  // SIGKILL this long after.
  std::chrono::milliseconds stop_grace{60000};
};

// Runs one process per rank (the torchrun model) and supervises them:
// returns OK when every rank exits 0, CANCELLED when this process was asked
// to stop (a signal, above), otherwise the first failure (rank, exit code or
// signal) after stopping the rest.
absl::Status LaunchRanks(const RankLaunchOptions& options);

}  // namespace dfc

#endif  // DFC_TRAINING_RANK_LAUNCHER_H_
