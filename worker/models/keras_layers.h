#ifndef DFC_WORKER_MODELS_KERAS_LAYERS_H_
#define DFC_WORKER_MODELS_KERAS_LAYERS_H_

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
};
TORCH_MODULE(KerasConv2d);

// BatchNormalization with Keras defaults: epsilon 1e-3, momentum 0.99
// (given in Keras's convention; LibTorch's momentum is 1 - Keras's).
torch::nn::BatchNorm2d KerasBatchNorm(int64_t channels, double keras_momentum = 0.99);

// MaxPooling2D(pool_size=k, padding='same') (stride = k); padded cells never win.
torch::Tensor KerasMaxPoolSame(const torch::Tensor& x, int64_t k);

// Keras Flatten on NHWC data: NCHW input flattened in (h, w, c) order.
torch::Tensor FlattenNhwc(const torch::Tensor& x);

}  // namespace dfc

#endif  // DFC_WORKER_MODELS_KERAS_LAYERS_H_
