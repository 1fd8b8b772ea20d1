#include "training/graphed_step.h"

#include "absl/strings/str_cat.h"
#include "models/precision.h"
#include "models/tensor_batch.h"

namespace dfc {

torch::Tensor LossSum(const std::string& kind, const torch::Tensor& logits, const torch::Tensor& targets) {
  if (kind == "mse") return torch::mse_loss(torch::sigmoid(logits), targets, torch::Reduction::Sum);
  return torch::binary_cross_entropy_with_logits(logits, targets, {}, {}, torch::Reduction::Sum);
}

GraphedTrainStep::GraphedTrainStep(DetectorImpl& model, torch::optim::Adam& adam, const torch::Device& device,
                                   Options options, std::unique_ptr<StepGraphBackend> backend)
    : model_(model), adam_(adam), device_(device), options_(std::move(options)), backend_(std::move(backend)) {
  for (const torch::Tensor& p : adam.param_groups()[0].params()) trainable_.push_back(p);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  loss_sum_ = torch::zeros({}, f32);
  correct_ = torch::zeros({}, f32);
}

void GraphedTrainStep::Body(const torch::Tensor& pixels, const torch::Tensor& labels, double scale) {
  // Gradients are zeroed in place (never set to none), so that backward
  // accumulates into tensors at the addresses the graph recorded.
  for (torch::Tensor& p : trainable_) {
    if (p.grad().defined()) p.mutable_grad().zero_();
  }
  torch::Tensor logits;
  {
    AutocastGuard autocast(device_.type(), options_.autocast);
    logits = model_.forward(PixelsToFloat(pixels));
  }
  logits = logits.to(torch::kFloat32);
  torch::Tensor loss_sum = LossSum(options_.loss, logits, labels);
  (loss_sum * scale).backward();
  adam_.Step();
  torch::NoGradGuard no_grad;
  loss_sum_.copy_(loss_sum.detach());
  correct_.copy_(((logits.detach() > 0).to(torch::kFloat32) == labels).sum());
}

absl::Status GraphedTrainStep::Run(const torch::Tensor& pixels, const torch::Tensor& labels, int64_t global_batch) {
  const double scale = 1.0 / static_cast<double>(global_batch);
  const bool full = pixels.size(0) == options_.batch_rows && backend_ != nullptr &&
                    (captured_global_batch_ == 0 || captured_global_batch_ == global_batch);
  try {
    if (!full) {  // a partial batch, or no backend: eager
      Body(pixels, labels, scale);
      ++eager_steps_;
      return absl::OkStatus();
    }
    if (!static_pixels_.defined()) {
      static_pixels_ = torch::empty_like(pixels);
      static_labels_ = torch::empty_like(labels);
      captured_global_batch_ = global_batch;
    }
    static_pixels_.copy_(pixels);
    static_labels_.copy_(labels);
    if (graph_) {
      graph_->Replay();
      ++replays_;
      return absl::OkStatus();
    }
    auto body = [this, scale] { Body(static_pixels_, static_labels_, scale); };
    if (warmups_done_ < std::max(1, options_.warmup_steps)) {
      backend_->RunWarmup(body);
      ++warmups_done_;
      ++eager_steps_;
      return absl::OkStatus();
    }
    auto graph = backend_->Capture(body);
    if (!graph.ok()) return graph.status();
    graph_ = std::move(*graph);
    graph_->Replay();  // the capture recorded this batch's step; now it runs
    ++replays_;
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("training step failed: ", e.what()));
  }
  return absl::OkStatus();
}

}  // namespace dfc
