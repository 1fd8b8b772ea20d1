#ifndef DFC_COMMON_RUN_DIR_H_
#define DFC_COMMON_RUN_DIR_H_

#include <chrono>
#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "absl/status/statusor.h"

namespace dfc {

// The run directory of a training job (the trainer writes it; the coordinator,
// the serving tier and `dfc plot` read it), defined once:
//   latest.ckpt      weights + optimizer after the last finished epoch
//   best.ckpt        the epoch with the best validation accuracy so far
//   interrupted.ckpt weights + optimizer + the epoch's progress where training
//                    was asked to stop mid-epoch (SIGTERM, SIGINT); a resume
//                    goes on from its step; removed once the epoch ends
//   epoch-N.ckpt     weights after epoch N
//   metrics.jsonl    one JSON object per finished epoch
//   X.ckpt.json      beside every checkpoint: its epoch and metrics, so that
//                    nothing needs LibTorch to learn what a checkpoint holds.
//   selection/       `--recipe notebook` only: the epoch-count selection on a
//                    50/50 split of the training split, laid out as above; the
//                    files above are then the retraining on all of it.
//   attempt          cluster jobs: the attempt that owns the directory (below)
//   run.lock         held by the process writing there while it trains (below)
// Torch-free.
namespace run_dir {

inline constexpr char kLatest[] = "latest";
inline constexpr char kBest[] = "best";
inline constexpr char kInterrupted[] = "interrupted";
// The notebook recipe's first phase: its folder under the run directory and
// its name in EpochMetrics.phase / StepProgress.phase.
inline constexpr char kSelection[] = "selection";

std::string Checkpoint(const std::string& dir, const std::string& which);  // which: latest | best | interrupted
std::string EpochCheckpoint(const std::string& dir, int64_t epoch);
std::string Metrics(const std::string& dir);
std::string Sidecar(const std::string& checkpoint_path);
std::string SelectionDir(const std::string& dir);

// The epoch (>= 1) a parsed metrics.jsonl line records; 0 when it records
// none (a torn last line, or not an object).
int MetricsLineEpoch(const nlohmann::json& line);

// Whether a phase's folder has something to resume from: latest.ckpt or
// interrupted.ckpt.
bool PhaseHasResumePoint(const std::string& dir);
// Whether a restart can resume rather than start over: the run or its
// selection phase has a resume point.
bool HasResumePoint(const std::string& dir);

// Fencing of a cluster job's run directory. The coordinator writes the
// attempt number before it starts that attempt's ranks. A rank of an earlier
// attempt that still runs (its worker was frozen or cut off from the
// coordinator, so the job was restarted elsewhere and its stop never came)
// finds a later attempt there and must not write: two attempts would
// otherwise interleave their epochs in one metrics.jsonl and checkpoints.
std::string AttemptFile(const std::string& dir);
absl::Status ClaimForAttempt(const std::string& dir, int attempt);
// OK when `attempt` still owns `dir` (or no attempt was recorded: `dfc
// train`); ABORTED naming both attempts when a later one does.
absl::Status CheckOwnedBy(const std::string& dir, int attempt);
// A cluster rank's first check, before it reads or writes anything there:
// the coordinator claimed `dir` for exactly this attempt. A later attempt
// there is ABORTED (as CheckOwnedBy). No claim, or an earlier attempt's,
// after waiting up to `wait` for shared storage to show it, means this
// worker does not see the coordinator's --output-root (another volume, or
// none, at that path): FAILED_PRECONDITION saying so, since the rank would
// train into a directory nobody else reads, and a restart elsewhere would
// start over.
absl::Status CheckClaimedFor(const std::string& dir, int attempt, std::chrono::milliseconds wait);

// The lock a run's writer (rank 0) holds on DIR/run.lock while it trains:
// exclusive for `dfc train`, so that a second run on one --out (another
// terminal, a forgotten one) is refused instead of interleaving epochs in
// metrics.jsonl and overwriting the first's checkpoints; shared for a cluster
// attempt's rank 0, so that a local run is kept out of a job's directory
// while attempts of the job are not kept out by a stale one still running
// (`attempt` fences those). Creates DIR. Refused: FAILED_PRECONDITION
// "--out: 'DIR' is in use by WHO (pid P on HOST since T UTC); ..." (shared:
// "the job's run directory 'DIR' ..."). A flock that
// fails otherwise (ENOLCK: an NFSv3 server without a lock daemon): no lock,
// -1, and `note` says so.
inline constexpr char kLockFile[] = "run.lock";
absl::StatusOr<int> LockForWriting(const std::string& dir, bool shared, const std::string& who, std::string* note);

// What a checkpoint's sidecar records.
struct CheckpointSummary {
  std::string arch;
  int64_t epoch = 0;  // epochs completed
  int64_t step = 0;
  double val_accuracy = 0;
  double val_auc = 0;
  double val_loss = 0;
  std::string ToJson() const;
};

// Written after the checkpoint itself (atomically).
absl::Status WriteSidecar(const std::string& checkpoint_path, const CheckpointSummary& summary);
// NOT_FOUND when the checkpoint has no sidecar (written before sidecars existed).
absl::StatusOr<CheckpointSummary> ReadSidecar(const std::string& checkpoint_path);

}  // namespace run_dir
}  // namespace dfc

#endif  // DFC_COMMON_RUN_DIR_H_
