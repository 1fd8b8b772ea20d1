#ifndef DFC_TRAINING_GRAPHED_STEP_H_
#define DFC_TRAINING_GRAPHED_STEP_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/status.h"
#include "models/detector.h"
#include "training/capturable_adam.h"
#include "training/cuda_step.h"

namespace dfc {

// The summed loss of a batch ("bce" on logits or "mse" on probabilities);
// callers scale it to a mean.
torch::Tensor LossSum(const std::string& kind, const torch::Tensor& logits, const torch::Tensor& targets);

// One rank's training step, captured once as a graph and replayed (a CUDA
// graph on a GPU): zeroing the gradients, the uint8 -> float conversion, the
// forward pass under autocast, the loss, backward and CapturableAdam's step.
// The graph reads the batch from static input tensors and writes the loss
// and correct count to static outputs. Batches of another size than the
// captured one (the last, partial batch of an epoch) run the same step
// eagerly, as do the warm-up steps before the capture; every batch is
// trained on exactly once.
//
// Single-rank only: the data-parallel all-reduces are not captured.
class GraphedTrainStep {
 public:
  struct Options {
    std::string loss = "bce";
    std::optional<at::ScalarType> autocast;  // nullopt: float32
    int64_t batch_rows = 32;  // the captured batch size
    int warmup_steps = 3;     // eager steps of that size before the capture (>= 1)
  };

  // `model`, `adam` and the parameters must outlive this.
  GraphedTrainStep(DetectorImpl& model, torch::optim::Adam& adam, const torch::Device& device, Options options,
                   std::unique_ptr<StepGraphBackend> backend);

  void SetLr(double lr) { adam_.SetLr(lr); }
  // One step on `pixels` (uint8 NHWC on the device) and `labels`, the batch's
  // loss being its sum over the images divided by `global_batch`.
  absl::Status Run(const torch::Tensor& pixels, const torch::Tensor& labels, int64_t global_batch);
  // The last step's summed loss and number of correct predictions (device
  // scalars, valid until the next Run).
  const torch::Tensor& loss_sum() const { return loss_sum_; }
  const torch::Tensor& correct() const { return correct_; }
  // Before checkpointing `adam`: its step count as this step has counted it.
  void SyncOptimizerState() { adam_.SyncStepCount(); }

  bool captured() const { return graph_ != nullptr; }
  int64_t replays() const { return replays_; }
  int64_t eager_steps() const { return eager_steps_; }

 private:
  void Body(const torch::Tensor& pixels, const torch::Tensor& labels, double scale);

  DetectorImpl& model_;
  CapturableAdam adam_;
  std::vector<torch::Tensor> trainable_;
  const torch::Device device_;
  const Options options_;
  std::unique_ptr<StepGraphBackend> backend_;
  std::unique_ptr<StepGraph> graph_;
  torch::Tensor static_pixels_, static_labels_;  // the graph's inputs
  torch::Tensor loss_sum_, correct_;             // outputs (fixed addresses)
  int64_t captured_global_batch_ = 0;
  int warmups_done_ = 0;
  int64_t replays_ = 0, eager_steps_ = 0;
};

}  // namespace dfc

#endif  // DFC_TRAINING_GRAPHED_STEP_H_
