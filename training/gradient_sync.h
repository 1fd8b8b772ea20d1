#ifndef DFC_TRAINING_GRADIENT_SYNC_H_
#define DFC_TRAINING_GRADIENT_SYNC_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include <torch/torch.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/status/status.h"
#include "training/collective.h"

namespace dfc {

// Averages gradients across ranks the way DistributedDataParallel does:
// parameters are grouped into buckets of about `bucket_bytes` in reverse
// registration order (the order backward produces them); a hook on each
// parameter copies its gradient into the bucket, and a full bucket's
// all-reduce starts while backward is still running. Buckets start in index
// order on every rank, as collectives must. Finish() waits for the rest and
// writes the averages into .grad.
//
// One training thread calls BeginStep()/Finish(); the hooks run on autograd's
// threads. Frozen parameters (requires_grad false) are left out.
class GradientSynchronizer {
 public:
  static constexpr int64_t kDefaultBucketBytes = int64_t{25} << 20;

  // With `overlap` false every all-reduce starts in Finish(), after backward
  // (the baseline that shows how much the overlap hides).
  GradientSynchronizer(Collective* collective, const std::vector<torch::Tensor>& parameters,
                       int64_t bucket_bytes = kDefaultBucketBytes, bool overlap = true);
  ~GradientSynchronizer();
  GradientSynchronizer(const GradientSynchronizer&) = delete;
  GradientSynchronizer& operator=(const GradientSynchronizer&) = delete;

  void BeginStep();
  // Waits for every bucket; returns the first collective error.
  absl::Status Finish();

  // Seconds Finish() spent waiting for all-reduces after backward ended in
  // the last step (the part of the communication not hidden behind backward).
  double last_wait_seconds() const { return last_wait_seconds_; }
  size_t num_buckets() {
    absl::MutexLock lock(&mu_);
    return buckets_.size();
  }

 private:
  struct Bucket {
    std::vector<size_t> params;     // indices into params_
    std::vector<int64_t> offsets;   // element offset of each in `flat`
    torch::Tensor flat;
    int pending = 0;
    bool launched = false;
    std::unique_ptr<CollectiveWork> work;
  };

  void OnGradient(size_t param, const torch::Tensor& grad);
  void LaunchReadyLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Collective* const collective_;
  const bool overlap_;
  std::vector<torch::Tensor> params_;
  std::vector<size_t> bucket_of_;  // param index -> bucket
  absl::Mutex mu_;
  std::vector<Bucket> buckets_ ABSL_GUARDED_BY(mu_);
  size_t next_launch_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<bool> seen_ ABSL_GUARDED_BY(mu_);
  double last_wait_seconds_ = 0;
  std::vector<std::pair<torch::Tensor, unsigned>> hooks_;
};

}  // namespace dfc

#endif  // DFC_TRAINING_GRADIENT_SYNC_H_
