#ifndef DFC_WORKER_WORKER_AGENT_H_
#define DFC_WORKER_WORKER_AGENT_H_

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/rpc/rpc_util.h"
#include "common/record_file.h"
#include "common/sandbox.h"
#include "common/subprocess.h"
#include "dfc/v1/dfc.grpc.pb.h"
#include "training/trainer.h"
#include "worker/worker_metrics.h"

namespace dfc {

struct WorkerAgentOptions {
  std::string coordinator;        // host:port
  RpcSecurity security;
  std::string advertise_host = "127.0.0.1";  // where this worker's rank 0 store is reachable
  int cpu_slots = 1;
  int gpus = 0;
  // The CPUs this worker's ranks share, each slot's rank an equal part;
  // 0 = the CPUs this process may use (UsableCpus). Several workers on one
  // machine (dfc cluster up) divide its CPUs between them.
  int cpus = 0;
  std::string rank_binary;        // the dfc-worker executable (runs `rank`)
  // SIGTERM -> SIGKILL for stopped ranks: a rank stopped mid-epoch finishes
  // its step and saves it (interrupted.ckpt) within this, or is killed and
  // its job resumes from its last epoch (--stop-grace).
  std::chrono::milliseconds kill_grace{3000};
  // Per-rank folders (log, progress, error): WORK/JOB/attempt-A/rank-R.
  // Default: $TMPDIR/dfc-worker-PID.
  std::string work_dir;
  // A rank with no step progress for this long is killed as hung, unless its
  // job sets config.hang_timeout_s.
  std::chrono::seconds hang_timeout{300};
  // CPU ranks confine themselves (RankSandboxPolicy) before they read
  // anything of the job's; false runs them unconfined. GPU ranks are not
  // confined yet: the CUDA driver's files were never measured here.
  bool confine_ranks = true;
  WorkerMetrics* metrics = nullptr;  // optional
};

// dfc-worker's supervisor: registers with the coordinator, heartbeats the
// state of its rank processes, starts the ranks it is assigned (one process
// per slot, the torchrun model) and stops the ones it is told to. One thread
// (Run) owns all state.
class WorkerAgent {
 public:
  explicit WorkerAgent(WorkerAgentOptions options) : options_(std::move(options)) {}
  ~WorkerAgent();
  WorkerAgent(const WorkerAgent&) = delete;
  WorkerAgent& operator=(const WorkerAgent&) = delete;
  // Runs until *stop becomes true; then stops its ranks.
  absl::Status Run(const std::atomic<bool>* stop);

 private:
  struct Rank {
    v1::RankAssignment assignment;
    Subprocess process;
    bool exited = false;
    int exit_code = 0;
    int store_port = 0;
    int gpu = -1;  // the GPU this rank owns (CUDA_VISIBLE_DEVICES), -1 on CPU
    std::string dir;  // log, progress, error
    std::chrono::steady_clock::time_point started;
    std::chrono::seconds hang_timeout{300};
    bool stopping = false;  // SIGTERM sent; SIGKILL when the grace period ends (never moved later)
    std::string error;      // reported with the exit
    bool hung = false;
    int64_t reports_offset = 0;   // DIR/reports forwarded up to here
    bool reports_broken = false;  // a damaged record: no more are read
    bool reports_pending = false;  // the last ForwardReports left some unsent
    std::chrono::steady_clock::time_point exited_at;
  };
  // How long an exited rank whose reports could not all be forwarded yet is
  // still heartbeated as running, so its exit does not arrive (and the rank
  // is not forgotten) before its last epochs do.
  static constexpr std::chrono::seconds kReportsGrace{30};
  // An exited rank whose reports are not all forwarded yet is reported as
  // running for a while longer (kReportsGrace): its exit would end the
  // attempt and its last epochs would arrive too late or not at all.
  static bool Held(const Rank& r, std::chrono::steady_clock::time_point now);
  // Shutting down with ranks running: tells the coordinator first
  // (HeartbeatRequest.leaving), so that their jobs go back to the queue
  // instead of failing when the ranks stop. Returns how many ran.
  int Leave(v1::WorkerService::Stub& stub);
  // Once they have all exited: tells it again (ranks_stopped), so that their
  // jobs are placed again without waiting out the rest of the stop grace.
  void Left(v1::WorkerService::Stub& stub);
  // Every rank's state, as heartbeats and registrations report it.
  void AddRankStatuses(google::protobuf::RepeatedPtrField<v1::RankStatus>* out,
                       std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now()) const;
  // How a rank ended, for the metrics.
  static std::string ExitResult(const Rank& r);
  absl::Status Register(v1::WorkerService::Stub& stub);
  void StartRank(const v1::RankAssignment& a);
  // Stops the ranks of `job_id` whose attempt is `attempt` or older.
  void StopRanks(const std::string& job_id, int attempt);
  // A deleted job: removes WORK_DIR/JOB (its rank folders) unless the id
  // is no plain name (IsPlainName); while a rank of it is still here (stopping), the
  // job waits in forget_ and is removed at a later heartbeat.
  void ForgetJob(const std::string& job_id);
  void Reap();
  // Forwards what rank 0s appended to DIR/reports since the last call, as
  // ReportMetrics of their own job and attempt, with this worker's
  // credentials; a transient failure leaves the rest for the next call
  // (Rank::reports_pending), as does more than a call may read.
  void ForwardReports(v1::WorkerService::Stub& stub);
  // Sends one read's `records` (starting at r.reports_offset) and moves the
  // offset past each one sent or refused; false at a transient failure.
  bool ForwardRecords(v1::WorkerService::Stub& stub, Rank& r, const std::vector<FileRecord>& records);
  // A chunk of a rank's log, for the coordinator (dfc logs).
  v1::LogChunk ReadRankLog(const v1::LogRequest& request) const;

  WorkerAgentOptions options_;  // work_dir is filled in by Run
  std::string worker_id_;
  // The id this worker had when it last ran on its work directory
  // (WORK/worker-id), asked back at its first registration.
  std::string previous_id_;
  int lock_fd_ = -1;  // WORK/worker.lock, taken by Run and held until the agent goes
  std::chrono::milliseconds interval_{500};
  int cpus_per_rank_ = 1;  // a slot's share of the usable CPUs (Register)
  std::vector<Rank> ranks_;
  std::set<std::string> forget_;  // deleted jobs whose folders wait for their ranks to go
  std::vector<v1::LogChunk> log_answers_;  // sent with the next heartbeat
};


// `dfc-worker rank`: one rank of a job. Joins the process group and trains.
// With DFC_RANK_DIR set (by the worker) it touches DIR/progress after every
// step and, on rank 0, appends its reports (epoch metrics, step progress, the
// resolved hyper-parameters) to DIR/reports (common/record_file.h: serialised
// ReportMetricsRequests), which the worker forwards. It holds no credential
// of the coordinator's and never connects to it. `cpus`: the CPUs it may
// use (its worker's share per slot; 0 = TrainOptions' default).
absl::Status RunRank(const v1::RankAssignment& assignment, int cpus);

// CUDA_VISIBLE_DEVICES for a rank: "" (no GPU) on a CPU slot; on GPU
// `gpu` (an index among the GPUs this worker sees), that entry of the
// worker's own CUDA_VISIBLE_DEVICES when it has one (an index, a UUID or a
// MIG id), so a worker given GPUs 2,3 runs its ranks there and not on 0,1.
std::string RankCudaDevices(int gpu, const char* worker_visible);

// What a CPU rank may still touch once confined (EnterSandbox): its job's
// shards (config.data), initial weights (config.init) and run directory
// (output_dir, written too), its own folder (rank_dir: progress, reports,
// error), the system's libraries and the few files of /proc, /sys, /dev and
// /etc that LibTorch, OpenMP, OpenCV and name resolution read, and the
// network (its process group). Not the worker's token or TLS key, nor any
// other file of this user's: a rank parses users' images and weights with
// libjpeg, libpng and libhdf5.
SandboxPolicy RankSandboxPolicy(const v1::RankAssignment& assignment, const std::string& rank_dir);

// DIR/reports of a rank's folder.
std::string ReportsPath(const std::string& rank_dir);

// The rank's side of the worker's failure report: the first line of `error`
// goes to DFC_RANK_DIR/error (if set), and the exit code says whether the job
// may retry (kRankExitTransient) or must fail (kRankExitPermanent).
int ReportRankFailure(const absl::Status& error);

}  // namespace dfc

#endif  // DFC_WORKER_WORKER_AGENT_H_
