#include "models/keras_layers.h"

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
      padding_ = total / 2;
      copts.padding(padding_);
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
  if (x.size(0) == 0) {
    // A rank's empty share of a ragged last batch still runs the model, so its
    // collectives (synchronised BatchNorm, gradient buckets) match the other
    // ranks'. LibTorch 1.13's convolution fails on an empty batch with a
    // channels-last weight ("view size is not compatible"); a contiguous copy
    // of the weight gives the same (empty) output and a zero gradient.
    return torch::conv2d(x, conv->weight.contiguous(), opt_.bias ? conv->bias : torch::Tensor(), opt_.stride,
                         padding_, opt_.dilation);
  }
  return conv->forward(x);
}

namespace {

constexpr double kBnEpsilon = 1e-3;

// Synchronised BatchNorm: statistics and their gradients summed over ranks.
class SyncBatchNormFunction : public torch::autograd::Function<SyncBatchNormFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor weight,
                               torch::Tensor bias, const AllReduceSumFn* all_reduce, torch::Tensor* global_stats) {
    const int64_t c = x.size(1);
    const std::vector<int64_t> dims = {0, 2, 3};
    // Two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2,
    // whose cancellation loses digits when activations sit far from zero
    // (the ResNet stem sees caffe-preprocessed pixels in the hundreds).
    torch::Tensor sums = torch::cat({x.sum(dims), torch::full({1}, static_cast<double>(x.numel() / c), x.options())});
    (*all_reduce)(sums);
    const torch::Tensor n = sums.narrow(0, c, 1);
    const torch::Tensor mean = sums.narrow(0, 0, c) / n;
    const torch::Tensor centered = x - mean.view({1, c, 1, 1});
    torch::Tensor squares = (centered * centered).sum(dims);
    (*all_reduce)(squares);
    const torch::Tensor var = squares / n;
    const torch::Tensor invstd = (var + kBnEpsilon).rsqrt();
    const torch::Tensor xhat = centered * invstd.view({1, c, 1, 1});
    *global_stats = torch::cat({mean, var, n});
    ctx->save_for_backward({xhat, weight, invstd, n});
    ctx->saved_data["all_reduce"] = reinterpret_cast<int64_t>(all_reduce);
    return xhat * weight.view({1, c, 1, 1}) + bias.view({1, c, 1, 1});
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor& xhat = saved[0];
    const torch::Tensor& weight = saved[1];
    const torch::Tensor& invstd = saved[2];
    const torch::Tensor& n = saved[3];
    const auto* all_reduce = reinterpret_cast<const AllReduceSumFn*>(ctx->saved_data["all_reduce"].toInt());
    const torch::Tensor dy = grads[0];
    const int64_t c = dy.size(1);
    const std::vector<int64_t> dims = {0, 2, 3};
    const torch::Tensor local_dbias = dy.sum(dims);
    const torch::Tensor local_dweight = (dy * xhat).sum(dims);
    // d(sum over ranks of the loss)/dx needs the global sums of dy and dy*xhat.
    torch::Tensor sums = torch::cat({local_dbias, local_dweight});
    (*all_reduce)(sums);
    const torch::Tensor mean_dy = (sums.narrow(0, 0, c) / n).view({1, c, 1, 1});
    const torch::Tensor mean_dy_xhat = (sums.narrow(0, c, c) / n).view({1, c, 1, 1});
    const torch::Tensor dx =
        (dy - mean_dy - xhat * mean_dy_xhat) * (weight * invstd).view({1, c, 1, 1});
    // Parameter gradients stay local: the gradient all-reduce averages them.
    return {dx, local_dweight, local_dbias, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

KerasBatchNormImpl::KerasBatchNormImpl(int64_t channels, double keras_momentum) : momentum_(1.0 - keras_momentum) {
  weight = register_parameter("weight", torch::ones({channels}));
  bias = register_parameter("bias", torch::zeros({channels}));
  running_mean = register_buffer("running_mean", torch::zeros({channels}));
  running_var = register_buffer("running_var", torch::ones({channels}));
  num_batches_tracked = register_buffer("num_batches_tracked", torch::zeros({}, torch::kLong));
}

torch::Tensor KerasBatchNormImpl::forward(const torch::Tensor& input) {
  // Under mixed precision (bf16/fp16 activations) the statistics, their
  // all-reduce and the normalisation run in float32, as AMP does for
  // BatchNorm; the next convolution casts back down.
  const torch::Tensor x = input.scalar_type() == torch::kBFloat16 || input.scalar_type() == torch::kHalf
                              ? input.to(torch::kFloat32)
                              : input;
  if (!is_training() || !all_reduce_) {
    if (is_training()) num_batches_tracked.add_(1);
    return torch::batch_norm(x, weight, bias, running_mean, running_var, is_training(), momentum(), kBnEpsilon,
                             /*cudnn_enabled=*/true);
  }
  torch::Tensor stats;
  torch::Tensor y = SyncBatchNormFunction::apply(x, weight, bias, &all_reduce_, &stats);
  torch::NoGradGuard no_grad;
  const int64_t c = x.size(1);
  const torch::Tensor n = stats.narrow(0, 2 * c, 1);
  const torch::Tensor unbiased = stats.narrow(0, c, c) * n / (n - 1).clamp_min(1);
  const double m = momentum();
  running_mean.mul_(1 - m).add_(stats.narrow(0, 0, c), m);
  running_var.mul_(1 - m).add_(unbiased, m);
  num_batches_tracked.add_(1);
  return y;
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
