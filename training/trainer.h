#ifndef DFC_TRAINING_TRAINER_H_
#define DFC_TRAINING_TRAINER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data_shards/shard_format.h"
#include "dfc/v1/dfc.pb.h"
#include "training/collective.h"
#include "models/detector.h"

namespace dfc {

// Everything `dfc train` accepts. Units and defaults are documented per field.
struct TrainOptions {
  std::string arch = "mesoinception4";
  std::string data_dir;  // a shard directory (manifest.json)
  std::string out_dir;   // checkpoints and metrics.jsonl go here
  int epochs = 10;       // maximum epochs
  int batch_size = 32;
  // Learning rate and Adam epsilon; <= 0 picks the model's default
  // (MesoNet: 1e-3 and 1e-7, Keras's Adam defaults; ResNet: the notebook's
  // 1e-5 and 1e-9).
  double lr = 0;
  double adam_eps = 0;
  std::string loss = "bce";             // "bce" or "mse" (MesoNet's paper used mse)
  // "constant" or "notebook" (constant 2 epochs, then x e^-0.2 per epoch);
  // "" = the recipe's (notebook under --recipe notebook, else constant).
  std::string lr_schedule;
  int early_stopping_patience = 0;      // epochs without val-accuracy gain; 0 = off
  std::string init_weights;             // Keras .h5 or DFC checkpoint to start from
  // Continue from out_dir/latest.ckpt; under --recipe notebook from the
  // phase it stopped in (out_dir/selection/latest.ckpt while choosing the
  // epoch count, out_dir/latest.ckpt once retraining).
  bool resume = false;
  // The CPUs this process may use (its worker's share per slot); 0 = the
  // CPUs it may run on (UsableCpus: affinity and cgroup limit) divided by
  // the world size.
  int cpus = 0;
  int threads = 0;                      // intra-op threads; 0 = `cpus`
  // Decode threads; 0 = of `cpus`, half on CPU and all but one on a GPU
  // (whose compute needs only the rank's own thread).
  int loader_threads = 0;
  uint64_t seed = 1;
  std::string recipe;                   // "" or "notebook" (see RunTraining)
  // Use at most this many training / validation images (a deterministic,
  // class-preserving subset); 0 = all.
  int64_t max_train_images = 0;
  int64_t max_val_images = 0;
  // Precise BatchNorm: before each validation the moving statistics are
  // recomputed as the plain average over this many training batches (no
  // gradient), so they describe the current weights however slow Keras's
  // momentum 0.99 is on a small dataset. As TrainingConfig has it: 0 the
  // default (20; off under --recipe notebook, which keeps Keras's moving
  // averages), -1 off. RunTraining resolves it to the count used (0: off).
  int precise_bn_batches = 0;
  DetectorOptions detector;
  // Data-parallel training: this process is one rank of `collective` (not
  // owned; null = a single process). --batch-size is then the global batch,
  // split between the ranks by the shard planner.
  Collective* collective = nullptr;
  int64_t bucket_bytes = int64_t{25} << 20;  // gradient all-reduce bucket size
  bool overlap_allreduce = true;             // start buckets during backward (false: after, for measurement)
  // Forward-pass precision: "fp32", "bf16" or "fp16" (autocast; weights,
  // optimizer state, BatchNorm statistics, the loss and checkpoints stay
  // float32; fp16 adds dynamic loss scaling). "": bf16 on CUDA, fp32 on CPU.
  std::string precision;
  // CUDA-graph capture of the training step (training/graphed_step.h):
  // "auto" or "" (on for a CUDA rank of a one-rank job not in fp16, else
  // eager), "on" (required; an error where it cannot be), "off".
  std::string cuda_graphs;
  // Called after every training step and validation batch: a rank's sign of
  // life for its worker's hang detection (empty: none).
  std::function<void()> progress;
  // Asked before each write to the run directory (a fresh or trimmed
  // metrics.jsonl, an epoch's metrics line and checkpoints); an error stops
  // training with it, nothing written. Cluster ranks check that their attempt
  // still owns the directory (run_dir::CheckOwnedBy). Empty: always.
  std::function<absl::Status()> may_write;
  // Asked before each training step and each precise-BatchNorm and
  // validation batch (each on CPU, every 8th on a GPU with several ranks,
  // where asking means waiting for the device): true stops training there.
  // The ranks of a data-parallel job agree first (one rank asked stops them
  // all at the same step). Rank 0 then writes interrupted.ckpt, which
  // --resume goes on from, and RunTraining returns CANCELLED saying where it
  // stopped. A stop before a phase's first step of an epoch writes nothing:
  // latest.ckpt holds it. Empty: never (dfc-worker ranks and `dfc train`
  // set it on SIGTERM, and `dfc train` on SIGINT too).
  std::function<bool()> stop_requested;
  // Rank 0 holds the run directory's lock while it trains (run_dir::
  // LockForWriting): who it names to a second run refused there ("" = "dfc
  // train"), and whether it is taken shared (cluster attempts, which
  // OUT/attempt fences from each other) rather than exclusive.
  std::string run_holder;
  bool run_lock_shared = false;

  std::string ToJson() const;
};

struct EpochMetrics {
  // "" for the run whose checkpoints are in --out; run_dir::kSelection for
  // the notebook recipe's epoch-count selection (in --out/selection).
  std::string phase;
  int epoch = 0;  // 1-based, within the phase
  double lr = 0;
  double loss = 0, accuracy = 0;
  double val_loss = 0, val_accuracy = 0, val_auc = 0;
  double images_per_second = 0;  // training images / training seconds
  double data_wait_share = 0;    // share of the training time spent waiting for data
  // Mean seconds per step: waiting for data, forward+backward (including the
  // all-reduce hidden behind backward), and waiting for the all-reduce after
  // backward ended (the exposed part). On rank 0 of a data-parallel job.
  double step_data_seconds = 0, step_compute_seconds = 0, step_allreduce_wait_seconds = 0;
  int world_size = 1;
  double seconds = 0;
  int64_t step = 0;

  std::string ToJson() const;
};

struct TrainResult {
  std::vector<EpochMetrics> history;
  int epochs = 0;             // epochs trained (in the final phase)
  int best_epoch = 0;         // 1-based epoch with the best validation accuracy
  double val_accuracy = 0, val_auc = 0, val_loss = 0;
  double images_per_second = 0;
  int64_t train_images = 0, val_images = 0;
  double seconds = 0;
  std::string checkpoint;     // the final model
  std::string ToJson() const;
};

// Receives progress; called on the training thread.
class TrainObserver {
 public:
  virtual ~TrainObserver() = default;
  virtual void OnPhase(const std::string& description) {}
  // phase: as EpochMetrics.phase; max_epochs: the phase's limit.
  virtual void OnEpochStart(const std::string& phase, int epoch, int max_epochs, int64_t steps) {}
  virtual void OnStep(int epoch, int64_t step_in_epoch, int64_t steps, double loss, double accuracy) {}
  virtual void OnEpoch(const EpochMetrics& m) {}
};

// Trains in this process (CUDA when the LibTorch build and machine have it,
// else CPU). With recipe "notebook": trains on a 50/50 (Keras-style) split of
// the training split with early stopping to choose the epoch count, then
// trains a fresh model on the whole training split for that many epochs and
// evaluates it on the validation split.
absl::StatusOr<TrainResult> RunTraining(const TrainOptions& options, TrainObserver* observer);

// The options of a TrainingConfig (what `dfc train` and `dfc submit` parse
// and every rank receives), field by field; an empty loss or schedule and a
// zero BatchNorm momentum keep TrainOptions' defaults.
TrainOptions TrainOptionsFromConfig(const v1::TrainingConfig& config);

// The learning rate of (0-based) epoch `epoch` under a schedule.
double ScheduledLr(const std::string& schedule, double base_lr, int epoch);

}  // namespace dfc

#endif  // DFC_TRAINING_TRAINER_H_
