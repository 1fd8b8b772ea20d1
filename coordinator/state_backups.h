#ifndef DFC_COORDINATOR_STATE_BACKUPS_H_
#define DFC_COORDINATOR_STATE_BACKUPS_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace dfc {

// YYYYMMDDTHHMMSSZ (UTC): how copies and the folders a restore puts the
// replaced database in are named, so that by name is by time.
std::string StateStamp(int64_t unix_s);

struct StateBackupOptions {
  std::string database;  // the running coordinator's STATE/jobs.db
  std::string dir;       // --backup-dir: where the copies go
  std::chrono::seconds interval{86400};
  int keep = 7;  // the newest copies kept; older ones are removed
  // JobStore::StateId of `database`: the folder is marked with it
  // (DIR/.dfc-state-id), and a folder marked with another state's is refused,
  // so that two coordinators given one folder do not prune each other's
  // copies or mix them. Empty: not checked.
  std::string state_id;
};

// Scheduled copies of the job database, taken while the coordinator runs
// (JobStore::Backup: SQLite's online backup, integrity-checked, renamed
// into place) as DIR/jobs-YYYYMMDDTHHMMSSZ.db (UTC), the newest `keep` kept.
// The schedule follows the newest copy in the folder, not the process: a
// coordinator restarted (or crash-looping) within the interval takes no new
// copy, so restarts never push the older copies out. A copy that fails is
// logged, counted and tried again after min(interval, 10 min); nothing is
// removed then. Files in DIR not named as copies are never touched.
class StateBackups {
 public:
  // Checks DIR (a directory this process can write, marked with no other
  // state's id; named as --backup-dir when not), removes copies a process stopped in the middle of writing
  // (DIR/jobs-*.db.partial and its journal), and starts the schedule on its
  // own thread.
  static absl::StatusOr<std::unique_ptr<StateBackups>> Start(StateBackupOptions options);
  ~StateBackups();  // stops the schedule (a copy under way is finished first)
  StateBackups(const StateBackups&) = delete;
  StateBackups& operator=(const StateBackups&) = delete;

  // Unix time of the newest copy (found at start or taken since); 0: none.
  int64_t last_copy_unix() const { return last_copy_unix_; }
  int64_t copies_taken() const { return taken_; }
  int64_t failures() const { return failures_; }
  // The copies in `dir`, oldest first (full paths).
  static std::vector<std::string> List(const std::string& dir);

 private:
  explicit StateBackups(StateBackupOptions options) : options_(std::move(options)) {}
  void Run();
  // One copy, then the oldest beyond `keep` removed.
  absl::Status TakeOne();

  const StateBackupOptions options_;
  std::atomic<int64_t> last_copy_unix_{0};
  std::atomic<int64_t> taken_{0};
  std::atomic<int64_t> failures_{0};
  std::mutex mu_;
  std::condition_variable wake_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace dfc

#endif  // DFC_COORDINATOR_STATE_BACKUPS_H_
