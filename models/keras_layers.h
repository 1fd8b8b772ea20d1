#ifndef DFC_MODELS_KERAS_LAYERS_H_
#define DFC_MODELS_KERAS_LAYERS_H_

#include <functional>
#include <utility>

#include <torch/torch.h>

namespace dfc {

// Keras/TensorFlow "same" padding along one axis: (before, after).
// out = ceil(in / stride); total = max((out - 1) * stride + eff_k - in, 0),
// before = total / 2 (TensorFlow puts the odd pixel after).
std::pair<int64_t, int64_t> SamePadding(int64_t in, int64_t kernel, int64_t stride, int64_t dilation);

struct KerasConv2dOptions {
  int64_t in = 0, out = 0, kernel = 3, stride = 1, dilation = 1;
  bool same = true;  // Keras padding='same'; false = 'valid'
  bool bias = true;
};

// Conv2D with Keras padding semantics. Symmetric "same" padding is folded
// into the convolution; asymmetric padding (even effective kernel or stride
// > 1 with unlucky sizes) is applied explicitly.
class KerasConv2dImpl : public torch::nn::Module {
 public:
  explicit KerasConv2dImpl(const KerasConv2dOptions& o);
  torch::Tensor forward(torch::Tensor x);
  torch::nn::Conv2d conv{nullptr};

 private:
  const KerasConv2dOptions opt_;
  bool runtime_pad_ = false;
  int64_t padding_ = 0;  // symmetric padding done by the convolution itself
};
TORCH_MODULE(KerasConv2d);

// Sums a tensor across the ranks of a data-parallel job, in place.
using AllReduceSumFn = std::function<void(torch::Tensor&)>;

// BatchNormalization with Keras semantics: epsilon 1e-3, moving averages with
// Keras's momentum (0.99 by default; LibTorch's momentum is 1 - Keras's).
// With an all-reduce set (data-parallel training) the batch statistics are
// those of the global batch (synchronised BatchNorm), so N ranks with 1/N of
// a batch each compute what one process computes on the whole batch, and the
// moving averages stay identical on every rank.
class KerasBatchNormImpl : public torch::nn::Module {
 public:
  explicit KerasBatchNormImpl(int64_t channels, double keras_momentum = 0.99);
  torch::Tensor forward(const torch::Tensor& x);
  void set_all_reduce(AllReduceSumFn fn) { all_reduce_ = std::move(fn); }
  // For precise BatchNorm: while >= 0, the update weight of the next batch's
  // statistics (LibTorch convention; 1/(k+1) for batch k gives the plain
  // average of the batches). -1: the layer's own momentum.
  void set_momentum_override(double m) { momentum_override_ = m; }

  torch::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  double momentum() const { return momentum_override_ >= 0 ? momentum_override_ : momentum_; }
  const double momentum_;  // LibTorch convention
  double momentum_override_ = -1;
  AllReduceSumFn all_reduce_;
};
TORCH_MODULE(KerasBatchNorm);

// MaxPooling2D(pool_size=k, padding='same') (stride = k); padded cells never win.
torch::Tensor KerasMaxPoolSame(const torch::Tensor& x, int64_t k);

// Keras Flatten on NHWC data: NCHW input flattened in (h, w, c) order.
torch::Tensor FlattenNhwc(const torch::Tensor& x);

}  // namespace dfc

#endif  // DFC_MODELS_KERAS_LAYERS_H_
