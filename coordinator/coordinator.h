#ifndef DFC_COORDINATOR_COORDINATOR_H_
#define DFC_COORDINATOR_COORDINATOR_H_

#include <chrono>
#include <functional>
#include <limits>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/status/statusor.h"
#include "coordinator/job_store.h"
#include "dfc/v1/dfc.pb.h"

namespace dfc {

// How long the ids of deleted jobs are kept, for workers that were away.
inline constexpr std::chrono::hours kKeepDeletedIds{24 * 90};

struct CoordinatorOptions {
  std::string state_dir;   // jobs.db lives here
  std::string output_root; // job output dirs (default: STATE/jobs); must be shared with workers
  std::chrono::milliseconds heartbeat_interval{500};
  // A worker not heard from for this long is dead; its jobs restart or fail.
  std::chrono::milliseconds worker_timeout{3000};
  // The wall clock, for the times jobs record (created, finished, events);
  // default: the system clock. Tests may fake it.
  std::function<int64_t()> now_ms;
  // The clock every timeout, heartbeat age and back-off is measured on;
  // default: the steady clock, so a step of the wall clock (NTP, a VM
  // restored, `date -s`) neither declares live workers dead nor keeps dead
  // ones for as long as it stepped back. Tests that fake now_ms and not
  // this one get now_ms for both.
  std::function<int64_t()> elapsed_ms;
  // A failed attempt is placed again after 3 heartbeat intervals, twice as
  // long after each further failure of the job, at most this.
  std::chrono::milliseconds max_restart_backoff{60000};
  // Records of jobs that ended longer ago than this (by their finish time,
  // on the wall clock) are deleted by a tick, once a minute at most, as
  // DeleteJob without outputs would; 0: kept for ever.
  std::chrono::milliseconds keep_ended{0};
  // A SCHEDULED job whose rank 0 has not started after this goes back to the queue.
  std::chrono::milliseconds schedule_timeout{60000};
  // A job that was RUNNING when the coordinator stopped keeps its ranks (they
  // train on meanwhile) if every one of them is reported back by a worker
  // within this long of the start; otherwise it goes back to the queue and
  // resumes from its checkpoint, the ranks that did report back stopped.
  std::chrono::milliseconds reattach_timeout{60000};
  // How many later jobs may start ahead of a queue head that does not fit
  // yet (backfill), before the head holds the queue strictly until it runs.
  int max_bypass = 8;
  // A job's data and init weights must resolve (symlinks followed) inside one
  // of these; default: the state directory's parent.
  std::vector<std::string> data_roots;
  // Tests of the scheduler and state machine: SQLite in memory, nothing
  // durable (the state directory is still locked and holds job outputs).
  bool in_memory_store = false;
  // Told of every change of a job's record (`before` is null for a new job),
  // under the coordinator's lock: keep it quick. Metrics use it.
  std::function<void(const v1::Job* before, const v1::Job& after)> on_job_change;
};

// Counts for the metrics endpoint, taken under the lock in one go.
struct ClusterSnapshot {
  std::map<v1::JobState, int> jobs;  // every job the coordinator holds, by state
  int queued = 0;
  int workers_live = 0, workers_suspect = 0;
  int cpu_slots = 0, cpu_slots_free = 0, gpus = 0, gpus_free = 0;  // live and suspect workers
  struct Running {
    std::string job_id;
    int epoch = 0;            // epochs finished
    int selection_epoch = 0;  // the notebook recipe's selection epochs finished
    // From the last finished epoch of the phase in progress (the selection's
    // until the run has one).
    double images_per_second = 0, data_seconds = 0, compute_seconds = 0, allreduce_wait_seconds = 0;
  };
  std::vector<Running> running;  // RUNNING jobs with their last finished epoch
};

// The coordinator's domain logic: the durable job queue and state machine
// (QUEUED -> SCHEDULED -> RUNNING -> SUCCEEDED/FAILED/CANCELLED), the worker
// registry with liveness, gang scheduling (all ranks of a job placed at once,
// priority then FIFO, strict order so that no two jobs each hold half the
// slots), rank-0 store rendezvous and restarts. No gRPC here: the services
// translate. Thread-safe; one mutex guards all state.
class Coordinator {
 public:
  // Takes an exclusive lock on the state directory (STATE/coordinator.lock,
  // held for the object's life): a second coordinator on the same directory
  // gets FAILED_PRECONDITION naming the holder.
  static absl::StatusOr<std::unique_ptr<Coordinator>> Create(const CoordinatorOptions& options);
  ~Coordinator();

  absl::StatusOr<v1::SubmitJobResponse> Submit(const v1::SubmitJobRequest& request);
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id);
  // One page of job summaries (see ListJobsRequest).
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request);
  absl::StatusOr<v1::Job> Cancel(const std::string& job_id);
  // Removes a job that ended: its run directory first (with `outputs`, and
  // only OUTPUT_ROOT/JOB; a job not yet ended whose data or init weights lie
  // there keeps it), then its record; every worker is told to forget its
  // rank folders. Returns the run directory removed ("" without outputs).
  // What cannot be removed leaves the job as it was, named in the error.
  absl::StatusOr<std::string> Delete(const std::string& job_id, bool outputs);
  // Returns the job once its version passes *version (or at timeout),
  // updating *version. Starts with *version = 0 for the current job.
  absl::StatusOr<v1::Job> WaitForChange(const std::string& job_id, int64_t* version,
                                        std::chrono::milliseconds timeout);

  absl::StatusOr<v1::RegisterWorkerResponse> RegisterWorker(const v1::RegisterWorkerRequest& request);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(const v1::HeartbeatRequest& request);
  absl::Status ReportMetrics(const v1::ReportMetricsRequest& request);
  // Expires dead workers and schedules; also run by a timer.
  void Tick();

  // The model catalogue, for the serving tier. RegisterModel checks the
  // name, the architecture and that the weights lie inside the data roots,
  // the output root or the state directory.
  absl::StatusOr<v1::CatalogEntry> GetModel(const std::string& name);
  absl::StatusOr<v1::RegisterModelResponse> RegisterModel(const v1::RegisterModelRequest& request);
  absl::StatusOr<std::vector<v1::CatalogEntry>> ListModels();
  absl::StatusOr<v1::JobOutput> GetJobOutput(const std::string& job_id);
  // Evaluation replicas: each announces its address every few seconds;
  // ListServers returns those heard from in the last 10 s.
  absl::Status AnnounceServer(const std::string& address);
  // Live and suspect workers, then the last few that timed out.
  v1::ListWorkersResponse ListWorkers();
  // A chunk of a rank's log, asked of the worker that ran it through its next
  // heartbeat (waits up to `wait` for the answer).
  absl::StatusOr<v1::GetRankLogResponse> GetRankLog(const v1::GetRankLogRequest& request,
                                                    std::chrono::milliseconds wait = std::chrono::seconds(5));
  std::vector<std::string> ListServers();
  ClusterSnapshot Snapshot();

  static bool IsTerminal(v1::JobState s);

  // The durable store (jobs and the imported-model catalogue).
  JobStore* store() { return store_.get(); }
  const CoordinatorOptions& options() const { return options_; }

 private:
  struct WorkerInfo {
    std::string address;
    int slots = 0;
    int64_t last_seen_ms = 0;
    int cpu_slots = 0, gpus = 0;
    // Ranks still running there that no placed attempt owns: an ended
    // attempt's (cancelled, failed, moved) saving their step before they
    // exit, or a stale one being stopped. They hold their GPU or CPUs until
    // they exit, so they hold their slots. Counted from each heartbeat's
    // report, and raised by StopRanks until the next one.
    int stopping = 0;
  };
  struct RankSlot {
    std::string worker_id;
    bool sent = false, running = false, exited = false;
    int exit_code = 0;
    std::string error;
  };
  struct ActiveJob {
    int64_t scheduled_ms = 0;
    int attempt = 0;
    std::vector<RankSlot> ranks;
    int store_port = 0;
    std::string store_host;
    std::string rendezvous_key;  // RankAssignment.rendezvous_key; in memory only
    // Taken over from the coordinator before a restart (Create): ranks whose
    // worker has not reported them back yet have no worker_id. Until every
    // rank has one, nothing is sent to them; at reattach_timeout the job goes
    // back to the queue (RequeueUnreattachedLocked).
    bool reattaching = false;
  };

  explicit Coordinator(CoordinatorOptions options, std::unique_ptr<JobStore> store)
      : options_(std::move(options)), store_(std::move(store)) {}
  int64_t Now() const { return options_.now_ms(); }  // for timestamps
  int64_t Elapsed() const { return options_.elapsed_ms(); }  // for intervals
  // How long a job waits before it is tried again (a first restart, an
  // unclaimed run directory): three heartbeats, so a worker that just died
  // has stopped looking alive.
  int64_t RetryDelayMs() const { return 3 * options_.heartbeat_interval.count(); }
  absl::Status Save(const v1::Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Save's second half: the job as the coordinator holds it (and tells
  // on_job_change) once it is written.
  void Cache(const v1::Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Fails the job's current attempt: restarts it (QUEUED) while restarts are
  // left and the error is not permanent, else FAILED with the first error.
  absl::Status FailAttempt(const std::string& job_id, const std::string& reason, bool permanent = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Appends the current attempt's failure to job.failures.
  void RecordFailure(v1::Job& job, const std::string& reason, bool permanent) const;
  // Appends an entry to the job's timeline (the last 100 are kept).
  void AddEvent(v1::Job& job, const std::string& kind, const std::string& message) const;
  // A QUEUED job's place in the queue and why it waits (not stored: computed when read).
  // `order`: QueueOrderLocked(), computed once by the caller.
  void FillWaitingLocked(v1::Job* job, const std::vector<std::string>& order) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The QUEUED jobs in the order the scheduler considers them.
  std::vector<std::string> QueueOrderLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StopRanks(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ScheduleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Heartbeat's steps: one rank's reported state (a stale rank gets a stop),
  // job transitions from what the ranks report, the ranks a worker should start.
  absl::Status RecordRankStatusLocked(const std::string& worker_id, const v1::RankStatus& st,
                                      v1::HeartbeatResponse* resp) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status AdvanceJobsLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AssignRanksLocked(const std::string& worker_id, v1::HeartbeatResponse* resp) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds to the job's record every epoch its run directory's metrics.jsonl
  // holds and the record lacks (ranks train on while the coordinator is
  // down; their reports are lost, their metrics file is not).
  absl::Status ReconcileEpochsLocked(v1::Job& job) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);  // both phases
  // phase "" (output_dir/metrics.jsonl) or run_dir::kSelection (its selection/).
  absl::Status ReconcilePhaseLocked(v1::Job& job, const std::string& phase) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ExpireWorkersLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Time in which the coordinator itself did not run (SIGSTOP, a frozen VM or
  // container, heavy swapping) is not held against others: no heartbeat could
  // be heard then. A gap since it last ran beyond one heartbeat interval moves
  // every worker's and evaluation server's last-heard time, and every placed
  // job's scheduling time, forward by the excess. Called first by whatever
  // judges liveness.
  void CreditOwnPauseLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `st` is a rank of a placed attempt, placed on (or claimed by) `worker_id`.
  bool OwnedLocked(const std::string& worker_id, const v1::RankStatus& st) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // WorkerInfo.stopping from what the worker reports: its running ranks that no placed attempt owns.
  void CountStoppingLocked(const std::string& worker_id, const google::protobuf::RepeatedPtrField<v1::RankStatus>& ranks)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The ranks of running attempts placed on (or claimed by) the worker.
  int RanksOn(const std::string& worker_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Its slots less those ranks and its stopping ones.
  int FreeSlots(const std::string& worker_id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Not heard from within two heartbeats: "suspect", and given no new ranks.
  bool Late(const WorkerInfo& w, int64_t now) const { return now - w.last_seen_ms > 2 * options_.heartbeat_interval.count(); }

  const CoordinatorOptions options_;
  const std::unique_ptr<JobStore> store_;
  int lock_fd_ = -1;  // flock on STATE/coordinator.lock
  absl::Mutex mu_;
  absl::CondVar changed_;
  std::map<std::string, v1::Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> versions_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, WorkerInfo> workers_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, ActiveJob> active_ ABSL_GUARDED_BY(mu_);
  // worker -> job -> the newest attempt whose ranks there must stop
  std::map<std::string, std::map<std::string, int>> stop_ ABSL_GUARDED_BY(mu_);
  // worker -> deleted jobs whose rank folders it must remove
  std::map<std::string, std::set<std::string>> forget_ ABSL_GUARDED_BY(mu_);
  int64_t next_worker_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t last_ran_ms_ ABSL_GUARDED_BY(mu_) = 0;  // CreditOwnPauseLocked's last call
  std::map<std::string, int64_t> servers_ ABSL_GUARDED_BY(mu_);  // address -> last announced (ms)
  // dfc logs: requests waiting for a worker's heartbeat, and its answers.
  std::map<std::string, std::vector<v1::LogRequest>> log_requests_ ABSL_GUARDED_BY(mu_);
  std::map<int64_t, v1::LogChunk> log_answers_ ABSL_GUARDED_BY(mu_);
  int64_t next_log_request_ ABSL_GUARDED_BY(mu_) = 1;
  absl::CondVar log_answered_;
  struct GoneWorker {
    std::string id;
    WorkerInfo info;
    std::string state;  // "gone" (timed out) or "left" (shut down)
  };
  std::deque<GoneWorker> gone_ ABSL_GUARDED_BY(mu_);  // newest last (<= 16)
  int64_t started_ms_ = 0;  // Elapsed() at Create
  // A restarted job waits a couple of heartbeats before it is placed again,
  // so that a worker that just died has stopped looking alive.
  std::map<std::string, int64_t> not_before_ms_ ABSL_GUARDED_BY(mu_);
  // Jobs requeued because a worker left, held back for its stop grace: that
  // worker and when it left. Its `ranks_stopped` heartbeat ends the hold.
  struct LeaveHold {
    std::string worker_id;
    int64_t left_ms = 0;
  };
  std::map<std::string, LeaveHold> leave_holds_ ABSL_GUARDED_BY(mu_);
  // Queued jobs whose run directory could not be claimed: why (status says it).
  std::map<std::string, std::string> unclaimed_ ABSL_GUARDED_BY(mu_);
  // Queue head -> jobs started ahead of it so far (bounded by max_bypass).
  std::map<std::string, int> bypassed_ ABSL_GUARDED_BY(mu_);
  int TotalLiveSlotsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RequeueUnstartedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Puts `job` back in the queue as it is (no restart counted; a caller that
  // records a failure has done so), with a "requeued" event saying `reason`,
  // and stops its ranks once that is written.
  absl::Status RequeueLocked(v1::Job job, const std::string& reason) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The worker leaves the registry for the last few that went (ListWorkers:
  // `state`, gone or left).
  void RetireWorkerLocked(const std::string& worker_id, const std::string& state) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The id a registering worker gets: the one it had (`previous`, from this
  // coordinator or one before a restart) when no live worker holds it and no
  // running attempt has a rank on it; a new one otherwise.
  std::string WorkerIdLocked(const std::string& previous) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Every rank of a reattaching job has been reported back by a worker.
  static bool AllReported(const ActiveJob& a) {
    for (const RankSlot& s : a.ranks) {
      if (s.worker_id.empty()) return false;
    }
    return true;
  }
  // HeartbeatRequest.leaving: every job with a rank on the worker goes back
  // to the queue (not a restart; its other ranks are stopped; placed again
  // after the worker's stop grace, when they have saved their step), and the
  // worker is gone. A write that fails leaves the rest as they were (the error goes
  // back to the worker).
  absl::Status LeaveLocked(const std::string& worker_id, int64_t stop_grace_ms) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // HeartbeatRequest.ranks_stopped of a worker that left: the jobs it held
  // back are placed once the retry delay since it left is over.
  void EndLeaveHoldsLocked(const std::string& worker_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A reattaching job whose ranks have all been reported back keeps running
  // on the workers that reported them (its record says where, with a
  // "reattached" event) once that is written.
  absl::Status FinishReattachLocked(const std::string& job_id, ActiveJob& a) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Reattaching jobs past reattach_timeout go back to the queue.
  void RequeueUnreattachedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Deletes a job's record and epochs, forgets it, tells the workers.
  absl::Status DeleteRecordLocked(const std::string& job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // NOT_FOUND for a job this coordinator does not hold: "was deleted at
  // TIME" when deleted_jobs remembers it, else "no job".
  absl::Status NoJob(const std::string& job_id);
  // keep_ended: deletes the records of jobs that ended before it.
  void DeleteExpiredLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t next_expiry_ms_ ABSL_GUARDED_BY(mu_) = std::numeric_limits<int64_t>::min();  // DeleteExpiredLocked's next run
};

// The job database of a state directory: STATE/jobs.db.
std::string StateDatabase(const std::string& state_dir);

// Locks STATE/coordinator.lock (flock, non-blocking); the fd keeps it.
absl::StatusOr<int> LockStateDir(const std::string& state_dir);

// dfc-coordinator --restore-from: with the state directory's lock held (so
// refused while a coordinator runs on it), STATE/jobs.db becomes a checked
// copy of `from` (JobStore::Restore); the database it replaces, with its
// WAL, is moved into STATE/before-restore-YYYYMMDDTHHMMSSZ (UTC) first.
struct RestoredState {
  int64_t jobs = 0;
  std::string database;  // STATE/jobs.db
  std::string aside;     // where the replaced database went; "" when there was none
};
absl::StatusOr<RestoredState> RestoreState(const std::string& state_dir, const std::string& from);

// Checks a submission: every field, then that data and init lie inside
// `roots` (canonical paths) and data is a shard directory. INVALID_ARGUMENT
// names the field; a path outside the roots gets the same answer whether or
// not it exists.
absl::Status ValidateSubmit(const v1::SubmitJobRequest& request, const std::vector<std::string>& roots);

// `path` with symlinks resolved (as far as it exists) inside one of `roots`?
bool InsideRoots(const std::string& path, const std::vector<std::string>& roots);

}  // namespace dfc

#endif  // DFC_COORDINATOR_COORDINATOR_H_
