#include "worker/models/keras_layers.h"

#include <limits>

namespace dfc {
namespace F = torch::nn::functional;

std::pair<int64_t, int64_t> SamePadding(int64_t in, int64_t kernel, int64_t stride, int64_t dilation) {
  const int64_t eff = (kernel - 1) * dilation + 1;
  const int64_t out = (in + stride - 1) / stride;
  const int64_t total = std::max<int64_t>((out - 1) * stride + eff - in, 0);
  return {total / 2, total - total / 2};
}

KerasConv2dImpl::KerasConv2dImpl(const KerasConv2dOptions& o) : opt_(o) {
  auto copts = torch::nn::Conv2dOptions(o.in, o.out, o.kernel).stride(o.stride).dilation(o.dilation).bias(o.bias);
  if (o.same) {
    const int64_t total = (o.kernel - 1) * o.dilation;
    // With stride 1 the total is fixed and, when even, splits evenly.
    if (o.stride == 1 && total % 2 == 0) {
      copts.padding(total / 2);
    } else {
      runtime_pad_ = true;
    }
  }
  conv = register_module("conv", torch::nn::Conv2d(copts));
}

torch::Tensor KerasConv2dImpl::forward(torch::Tensor x) {
  if (runtime_pad_) {
    auto [top, bottom] = SamePadding(x.size(2), opt_.kernel, opt_.stride, opt_.dilation);
    auto [left, right] = SamePadding(x.size(3), opt_.kernel, opt_.stride, opt_.dilation);
    if (top || bottom || left || right) x = F::pad(x, F::PadFuncOptions({left, right, top, bottom}));
  }
  return conv->forward(x);
}

torch::nn::BatchNorm2d KerasBatchNorm(int64_t channels, double keras_momentum) {
  return torch::nn::BatchNorm2d(torch::nn::BatchNorm2dOptions(channels).eps(1e-3).momentum(1.0 - keras_momentum));
}

torch::Tensor KerasMaxPoolSame(const torch::Tensor& x, int64_t k) {
  auto [top, bottom] = SamePadding(x.size(2), k, k, 1);
  auto [left, right] = SamePadding(x.size(3), k, k, 1);
  torch::Tensor in = x;
  if (top || bottom || left || right) {
    in = F::pad(x, F::PadFuncOptions({left, right, top, bottom})
                       .value(-std::numeric_limits<double>::infinity()));
  }
  return torch::max_pool2d(in, {k, k}, {k, k});
}

torch::Tensor FlattenNhwc(const torch::Tensor& x) { return x.permute({0, 2, 3, 1}).flatten(1); }

}  // namespace dfc
