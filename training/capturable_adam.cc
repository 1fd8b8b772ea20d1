#include "training/capturable_adam.h"

#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace dfc {
namespace {

// The key of a parameter in Optimizer::state(): its TensorImpl's address,
// as a string in LibTorch 1.13 and as a void* from 2.0 on.
template <typename Map>
typename Map::key_type StateKey(const Map&, const torch::Tensor& p) {
  using Key = typename Map::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream key;  // what c10::guts::to_string(TensorImpl*) wrote
    key << static_cast<const void*>(p.unsafeGetTensorImpl());
    return key.str();
  } else {
    return static_cast<Key>(p.unsafeGetTensorImpl());
  }
}

}  // namespace

CapturableAdam::CapturableAdam(torch::optim::Adam& adam) : adam_(adam) {
  if (adam.param_groups().size() != 1) throw std::invalid_argument("CapturableAdam: one parameter group expected");
  auto& group = adam.param_groups()[0];
  const auto& o = static_cast<const torch::optim::AdamOptions&>(group.options());
  if (o.weight_decay() != 0 || o.amsgrad()) {
    throw std::invalid_argument("CapturableAdam: weight decay and AMSGrad are not supported");
  }
  beta1_ = std::get<0>(o.betas());
  beta2_ = std::get<1>(o.betas());
  eps_ = o.eps();
  int64_t step = -1;
  auto& state = adam.state();
  for (const torch::Tensor& p : group.params()) {
    auto key = StateKey(state, p);
    auto it = state.find(key);
    if (it == state.end()) {
      auto s = std::make_unique<torch::optim::AdamParamState>();
      s->step(0);
      s->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      s->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      it = state.emplace(key, std::move(s)).first;
    }
    auto& s = static_cast<torch::optim::AdamParamState&>(*it->second);
    // Parameters stepped together share one count (the trainer's always are).
    if (step >= 0 && s.step() != step) throw std::invalid_argument("CapturableAdam: parameters at different steps");
    step = s.step();
    params_.push_back(p);
    exp_avg_.push_back(s.exp_avg());
    exp_avg_sq_.push_back(s.exp_avg_sq());
  }
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64).device(params_.empty() ? torch::kCPU : params_[0].device());
  step_ = torch::full({}, static_cast<double>(std::max<int64_t>(step, 0)), opts);
  lr_ = torch::full({}, o.lr(), opts);
}

void CapturableAdam::SetLr(double lr) {
  lr_.fill_(lr);
  static_cast<torch::optim::AdamOptions&>(adam_.param_groups()[0].options()).lr(lr);
}

void CapturableAdam::Step() {
  torch::NoGradGuard no_grad;
  step_.add_(1);
  // torch.optim.Adam(capturable=True): the scalars stay on the device.
  const torch::Tensor bias_correction1 = 1 - torch::pow(beta1_, step_);
  const torch::Tensor bias_correction2_sqrt = (1 - torch::pow(beta2_, step_)).sqrt();
  const torch::Tensor step_size_neg = -(lr_ / bias_correction1);
  const torch::Tensor denom_scale = bias_correction2_sqrt * step_size_neg;
  const torch::Tensor eps_term = eps_ / step_size_neg;
  for (size_t i = 0; i < params_.size(); ++i) {
    const torch::Tensor& grad = params_[i].grad();
    if (!grad.defined()) continue;
    exp_avg_[i].mul_(beta1_).add_(grad, 1 - beta1_);
    exp_avg_sq_[i].mul_(beta2_).addcmul_(grad, grad, 1 - beta2_);
    // p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
    torch::Tensor denom = (exp_avg_sq_[i].sqrt() / denom_scale).add_(eps_term);
    params_[i].data().addcdiv_(exp_avg_[i], denom);
  }
}

int64_t CapturableAdam::StepCount() const { return static_cast<int64_t>(step_.item<double>()); }

void CapturableAdam::SyncStepCount() {
  const int64_t step = StepCount();
  auto& state = adam_.state();
  for (const torch::Tensor& p : params_) {
    auto it = state.find(StateKey(state, p));
    if (it != state.end()) static_cast<torch::optim::AdamParamState&>(*it->second).step(step);
  }
}

}  // namespace dfc
