#ifndef DFC_COORDINATOR_JOB_STORE_H_
#define DFC_COORDINATOR_JOB_STORE_H_

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/status/statusor.h"
#include "dfc/v1/dfc.pb.h"

struct sqlite3;

namespace dfc {

// Durable job records (and the imported-model catalogue) in SQLite (WAL, synchronous=FULL): a job is on disk
// before SubmitJob answers, so a SIGKILL of the coordinator loses no
// acknowledged job. Thread-safe (one connection behind a mutex).
class JobStore {
 public:
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::string& path);
  // Writes a consistent copy of the database at `path` to `to` (SQLite's
  // online backup, safe while a coordinator uses it; written beside `to`,
  // checked with integrity_check, then renamed into place). Returns the
  // number of jobs in the copy. `flag` names where `to` came from in errors.
  static absl::StatusOr<int64_t> Backup(const std::string& path, const std::string& to,
                                        const std::string& flag = "--backup-to");
  // Makes `path` (a database no connection has open: the caller holds the
  // state directory's lock) a checked copy of `from` (Backup: a backup
  // taken with its WAL, or any DFC state database). The database at `path`,
  // with its -wal and -shm, is moved into the folder `aside` first (created;
  // second = false when there was nothing to move). A copy that does not
  // check (not a database, damaged, not DFC's) changes nothing:
  // INVALID_ARGUMENT naming --restore-from. Returns the number of jobs.
  static absl::StatusOr<std::pair<int64_t, bool>> Restore(const std::string& from, const std::string& path,
                                                          const std::string& aside);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Creates a QUEUED job, or returns the existing one with the same
  // idempotency key (second = true).
  absl::StatusOr<std::pair<v1::Job, bool>> Create(const v1::SubmitJobRequest& request, const std::string& output_root,
                                                  int64_t now_ms);
  absl::StatusOr<v1::Job> Get(const std::string& job_id);
  // Every job, oldest first.
  absl::StatusOr<std::vector<v1::Job>> List();
  // Writes the job's mutable fields (state, reason, restarts, times, workers).
  absl::Status Update(const v1::Job& job);
  // Removes a job and its epochs, and records that it was deleted at
  // `now_ms` (one transaction).
  absl::Status Delete(const std::string& job_id, int64_t now_ms);
  // When the job was deleted; 0 when it was not (or that was forgotten).
  absl::StatusOr<int64_t> DeletedAt(const std::string& job_id);
  // Forgets the deletions made before `unix_ms`.
  absl::Status ForgetDeletedBefore(int64_t unix_ms);
  // Records one epoch's metrics (replacing a re-run of the same epoch).
  absl::Status PutEpoch(const std::string& job_id, const v1::EpochMetrics& m);

  // The model catalogue (ImportModel through any dfc-server), by name.
  // PutModel refuses an existing name unless `replace`; it returns the
  // weights path the name pointed at before (empty if none).
  absl::StatusOr<std::string> PutModel(const v1::CatalogEntry& entry, bool replace);
  absl::StatusOr<v1::CatalogEntry> GetModel(const std::string& name);
  absl::StatusOr<std::vector<v1::CatalogEntry>> ListModels();
  // Copies models imported before the catalogue (weights in models_dir/NAME.weights).
  absl::Status MigrateLegacyModels(const std::string& models_dir);

  // A random id given to the state when its database is created; copies
  // (Backup) and restores keep it. Scheduled backups check it against
  // their folder's.
  absl::StatusOr<std::string> StateId();

  // Whether the last write failed (a full or read-only disk): the
  // coordinator's metrics say so.
  bool write_failing() const { return write_failing_; }

 private:
  explicit JobStore(sqlite3* db) : db_(db) {}
  absl::Status Exec(const std::string& sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::Job> GetLocked(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Returns a write's status; logs when writes start failing and when they
  // work again (not each failure).
  absl::Status Written(absl::Status st);

  absl::Mutex mu_;
  sqlite3* const db_;
  std::atomic<bool> write_failing_{false};
};

}  // namespace dfc

#endif  // DFC_COORDINATOR_JOB_STORE_H_
