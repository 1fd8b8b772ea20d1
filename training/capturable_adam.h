#ifndef DFC_TRAINING_CAPTURABLE_ADAM_H_
#define DFC_TRAINING_CAPTURABLE_ADAM_H_

#include <vector>

#include <torch/torch.h>

namespace dfc {

// Adam whose step never reads a value on the host, so that a CUDA graph can
// capture it (torch.optim.Adam(capturable=True)'s arithmetic). LibTorch's
// C++ torch::optim::Adam keeps each parameter's step count on the host and
// computes the bias corrections and the learning rate there: a captured step
// would replay the first step's values forever. Here the step count and the
// learning rate are device tensors, updated in place.
//
// The moments are `adam`'s own state tensors (created when missing), so a
// checkpoint of `adam` holds this optimizer's state once SyncStepCount() has
// written the step count back; `adam` must have one parameter group, weight
// decay 0 and no AMSGrad (the trainer's Adam). `adam` must outlive this.
class CapturableAdam {
 public:
  explicit CapturableAdam(torch::optim::Adam& adam);

  // Outside a capture: the learning rate the next steps use.
  void SetLr(double lr);
  // One Adam step over the parameters' current gradients (parameters without
  // a gradient are skipped). Capturable: no host synchronisation.
  void Step();
  // Writes the device step count into `adam`'s per-parameter state (one
  // device-to-host read), as torch::optim::Adam would have counted it.
  void SyncStepCount();
  int64_t StepCount() const;

 private:
  torch::optim::Adam& adam_;
  std::vector<torch::Tensor> params_, exp_avg_, exp_avg_sq_;
  torch::Tensor step_, lr_;  // float64 scalars on the parameters' device
  double beta1_ = 0.9, beta2_ = 0.999, eps_ = 1e-8;
};

}  // namespace dfc

#endif  // DFC_TRAINING_CAPTURABLE_ADAM_H_
