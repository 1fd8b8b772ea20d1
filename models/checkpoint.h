#ifndef DFC_MODELS_CHECKPOINT_H_
#define DFC_MODELS_CHECKPOINT_H_

#include <cstdint>
#include <string>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "models/detector.h"

namespace dfc {

// What a checkpoint records besides tensors.
struct CheckpointMeta {
  std::string arch;
  int64_t epoch = 0;  // epochs completed
  int64_t step = 0;   // optimizer steps taken
  double lr = 0;      // learning rate in force for the next epoch
  // JSON array of the per-epoch metric objects so far.
  std::string metrics_json = "[]";
  // JSON object of the training options (for `--resume` checks).
  std::string options_json = "{}";
  // Empty for a checkpoint at the end of an epoch. A checkpoint written when
  // training was asked to stop in the middle of epoch `epoch + 1`
  // (interrupted.ckpt) holds, as a JSON object, how far that epoch got: its
  // steps taken and running totals (Trainer's EpochTotals).
  std::string epoch_progress_json;
};

// Saves model parameters and buffers, the optimizer state, the CPU RNG state
// and `meta` into `path` atomically (temporary file, fsync, rename).
absl::Status SaveCheckpoint(const std::string& path, DetectorImpl& model, torch::optim::Optimizer* optimizer,
                            const CheckpointMeta& meta);

// The default CPU generator's state (what checkpoints keep as "rng/cpu"),
// read and set under its lock.
torch::Tensor CpuRngState();
void SetCpuRngState(const torch::Tensor& state);

// Reads only the metadata (to choose the architecture before building a model).
absl::StatusOr<CheckpointMeta> ReadCheckpointMeta(const std::string& path);

// Restores a checkpoint into `model` (and `optimizer` and the CPU RNG when
// given). Fails, naming the tensor, on any missing tensor or shape mismatch.
absl::StatusOr<CheckpointMeta> LoadCheckpoint(const std::string& path, DetectorImpl& model,
                                              torch::optim::Optimizer* optimizer, bool restore_rng);

// The served-weights file (common/weights_file.h) of `model`: its parameters
// and buffers, written atomically. What dfc-server stores for imports.
absl::Status SaveWeightsFile(const std::string& path, DetectorImpl& model, int64_t epoch);

// True when the file at `path` starts with the served-weights magic.
bool IsWeightsFile(const std::string& path);

// Reads a served-weights file (its arch and epoch: `meta`, when given) into
// `model`: every parameter and buffer by name, dtype and shape, and nothing
// else in the file. DATA_LOSS / INVALID_ARGUMENT name what is wrong.
absl::Status LoadWeightsFile(const std::string& path, DetectorImpl& model, CheckpointMeta* meta = nullptr);

// Loads the weights in `path` into `model`, the format told apart by content:
// Keras HDF5 weights, a served-weights file or a DFC checkpoint (its model
// tensors). What `--init` and `--weights` take. A file of none of these
// formats is INVALID_ARGUMENT saying what it seems to be instead: empty, cut
// short, a Python torch.save file, a Keras 3 archive.
absl::Status LoadWeightsByContent(const std::string& path, DetectorImpl& model);

}  // namespace dfc

#endif  // DFC_MODELS_CHECKPOINT_H_
