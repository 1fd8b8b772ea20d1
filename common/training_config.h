#ifndef DFC_COMMON_TRAINING_CONFIG_H_
#define DFC_COMMON_TRAINING_CONFIG_H_

// The one validator of a training configuration, used by `dfc train`, the
// coordinator's SubmitJob and every rank before it trains. Torch-free: the
// coordinator links it. Each error is INVALID_ARGUMENT naming the field and
// its flag: "config.lr (--lr): must be finite and in (0, 10], got nan".

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dfc/v1/dfc.pb.h"

namespace dfc {

// Bounds on every string a client sends (a 9 MiB path is an attack, not a path).
inline constexpr size_t kMaxPathBytes = 4096;
inline constexpr size_t kMaxNameBytes = 64;
inline constexpr size_t kMaxIdempotencyKeyBytes = 256;
// Priorities are small integers; INT_MAX would starve everything forever.
inline constexpr int kMaxPriority = 1000;

// One plain path component: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with
// '.' (so neither "." nor ".."). An imported model's name must be one (the
// coordinator's catalogue and every dfc-server check it); a worker removes a
// deleted job's folder only under such an id.
bool IsPlainName(const std::string& name);
// The job folders a worker names when it registers (held_jobs), at most.
inline constexpr int kMaxHeldJobs = 10000;

// SUCCEEDED, FAILED or CANCELLED: the job will not change again.
bool IsTerminalState(v1::JobState state);

// The detectors (names as `--model` takes them).
const std::vector<std::string>& KnownModels();

// The names users type (and checkpoints and TrainOptions record) for the
// configuration's enums; UNSPECIFIED is "". Parse* fail with INVALID_ARGUMENT
// naming the field, its flag and the accepted names.
std::string ModelName(v1::Model model);
std::string LossName(v1::Loss loss);
std::string LrScheduleName(v1::LrSchedule schedule);
std::string PrecisionName(v1::Precision precision);
std::string CudaGraphsName(v1::CudaGraphs graphs);
absl::StatusOr<v1::Model> ParseModel(const std::string& name);
absl::StatusOr<v1::Loss> ParseLoss(const std::string& name);            // "" -> UNSPECIFIED
absl::StatusOr<v1::LrSchedule> ParseLrSchedule(const std::string& name);  // "" -> UNSPECIFIED
absl::StatusOr<v1::Precision> ParsePrecision(const std::string& name);    // "" -> UNSPECIFIED
absl::StatusOr<v1::CudaGraphs> ParseCudaGraphs(const std::string& name);  // "" -> UNSPECIFIED

// A config stored before the enums (strings in fields 1, 7, 8, 19, now
// unknown fields): converts them. False when a stored name is not known.
bool UpgradeStoredConfig(v1::TrainingConfig* config);

absl::Status ValidateTrainingConfig(const v1::TrainingConfig& config);

// The whole submission: the config, world size, restarts, priority, key.
absl::Status ValidateSubmitRequest(const v1::SubmitJobRequest& request);

}  // namespace dfc

#endif  // DFC_COMMON_TRAINING_CONFIG_H_
