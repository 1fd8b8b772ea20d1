#include "training/gradient_sync.h"

#include <chrono>

namespace dfc {

GradientSynchronizer::GradientSynchronizer(Collective* collective, const std::vector<torch::Tensor>& parameters,
                                           int64_t bucket_bytes, bool overlap)
    : collective_(collective), overlap_(overlap) {
  for (const auto& p : parameters) {
    if (p.requires_grad()) params_.push_back(p);
  }
  bucket_of_.resize(params_.size());
  absl::MutexLock lock(&mu_);
  // Reverse order: the last layers' gradients are ready first.
  Bucket cur;
  int64_t bytes = 0, elems = 0;
  auto close = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (cur.params.empty()) return;
    cur.flat = torch::zeros({elems}, params_[cur.params[0]].options().requires_grad(false));
    buckets_.push_back(std::move(cur));
    cur = Bucket();
    bytes = elems = 0;
  };
  for (size_t i = params_.size(); i-- > 0;) {
    const auto& p = params_[i];
    if (!cur.params.empty() && bytes + p.numel() * p.element_size() > bucket_bytes) close();
    bucket_of_[i] = buckets_.size();
    cur.params.push_back(i);
    cur.offsets.push_back(elems);
    elems += p.numel();
    bytes += p.numel() * p.element_size();
  }
  close();
  seen_.assign(params_.size(), false);
  for (size_t i = 0; i < params_.size(); ++i) {
    unsigned handle = params_[i].register_hook([this, i](torch::Tensor grad) {
      OnGradient(i, grad);
      return grad;
    });
    hooks_.emplace_back(params_[i], handle);
  }
}

GradientSynchronizer::~GradientSynchronizer() {
  for (auto& [param, handle] : hooks_) param.remove_hook(handle);
}

void GradientSynchronizer::BeginStep() {
  absl::MutexLock lock(&mu_);
  for (Bucket& b : buckets_) {
    b.pending = static_cast<int>(b.params.size());
    b.launched = false;
    b.work.reset();
  }
  next_launch_ = 0;
  seen_.assign(params_.size(), false);
}

void GradientSynchronizer::OnGradient(size_t i, const torch::Tensor& grad) {
  absl::MutexLock lock(&mu_);
  Bucket& b = buckets_[bucket_of_[i]];
  size_t slot = 0;
  while (b.params[slot] != i) ++slot;
  torch::NoGradGuard no_grad;
  torch::Tensor dst = b.flat.narrow(0, b.offsets[slot], grad.numel());
  // A parameter used twice gets two hook calls: accumulate, count once.
  if (seen_[i]) {
    dst.add_(grad.reshape({-1}));
    return;
  }
  seen_[i] = true;
  dst.copy_(grad.reshape({-1}));
  if (--b.pending == 0 && overlap_) LaunchReadyLocked();
}

void GradientSynchronizer::LaunchReadyLocked() {
  while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
    Bucket& b = buckets_[next_launch_++];
    b.launched = true;
    b.work = collective_->AllReduceSumAsync(b.flat);
  }
}

absl::Status GradientSynchronizer::Finish() {
  const auto t0 = std::chrono::steady_clock::now();
  absl::MutexLock lock(&mu_);
  // Parameters that got no gradient this step contribute zeros, so every rank
  // still launches every bucket in the same order.
  for (Bucket& b : buckets_) {
    for (size_t s = 0; s < b.params.size(); ++s) {
      if (!seen_[b.params[s]]) {
        b.flat.narrow(0, b.offsets[s], params_[b.params[s]].numel()).zero_();
        seen_[b.params[s]] = true;
        --b.pending;
      }
    }
  }
  LaunchReadyLocked();
  absl::Status first;
  for (Bucket& b : buckets_) {
    absl::Status st = b.work ? b.work->Wait() : absl::InternalError("bucket never launched");
    if (!st.ok() && first.ok()) first = st;
  }
  last_wait_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!first.ok()) return first;
  torch::NoGradGuard no_grad;
  const double scale = 1.0 / collective_->world_size();
  for (Bucket& b : buckets_) {
    for (size_t s = 0; s < b.params.size(); ++s) {
      torch::Tensor& p = params_[b.params[s]];
      torch::Tensor avg = b.flat.narrow(0, b.offsets[s], p.numel()).view(p.sizes()) * scale;
      if (p.mutable_grad().defined()) {
        p.mutable_grad().copy_(avg);
      } else {
        p.mutable_grad() = avg.contiguous(p.suggest_memory_format());
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace dfc
