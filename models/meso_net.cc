#include "models/meso_net.h"

#include "absl/strings/str_cat.h"

namespace dfc {
namespace F = torch::nn::functional;
namespace {

KerasConv2d Conv(int64_t in, int64_t out, int64_t k, int64_t dilation = 1) {
  KerasConv2dOptions o;
  o.in = in;
  o.out = out;
  o.kernel = k;
  o.dilation = dilation;
  return KerasConv2d(o);
}

}  // namespace

InceptionBlockImpl::InceptionBlockImpl(int64_t in, int64_t a, int64_t b, int64_t c, int64_t d) {
  branch_a_ = register_module("branch_a", Conv(in, a, 1));
  reduce_b_ = register_module("reduce_b", Conv(in, b, 1));
  conv_b_ = register_module("conv_b", Conv(b, b, 3, 1));
  reduce_c_ = register_module("reduce_c", Conv(in, c, 1));
  conv_c_ = register_module("conv_c", Conv(c, c, 3, 2));
  reduce_d_ = register_module("reduce_d", Conv(in, d, 1));
  conv_d_ = register_module("conv_d", Conv(d, d, 3, 3));
}

torch::Tensor InceptionBlockImpl::forward(const torch::Tensor& x) {
  auto branch = [&](KerasConv2d& reduce, KerasConv2d& conv) {
    return torch::relu(conv->forward(torch::relu(reduce->forward(x))));
  };
  return torch::cat({torch::relu(branch_a_->forward(x)), branch(reduce_b_, conv_b_), branch(reduce_c_, conv_c_),
                     branch(reduce_d_, conv_d_)},
                    1);
}

void InceptionBlockImpl::AppendKerasLayers(int* n, std::vector<KerasLayer>* out) {
  // classifiers.py creates: x1 1x1; x2 1x1, 3x3; x3 1x1, 3x3 d2; x4 1x1, 3x3 d3.
  for (KerasConv2d* conv : {&branch_a_, &reduce_b_, &conv_b_, &reduce_c_, &conv_c_, &reduce_d_, &conv_d_}) {
    out->push_back(KerasConvBinding(absl::StrCat("conv2d_", (*n)++), (*conv)->conv->weight, (*conv)->conv->bias));
  }
}

MesoNetImpl::MesoNetImpl(bool inception, double bn_momentum) : inception_(inception) {
  int64_t c2;
  if (inception_) {
    inc1_ = register_module("inc1", InceptionBlock(3, 1, 4, 4, 2));
    bn1_ = register_module("bn1", KerasBatchNorm(11, bn_momentum));
    inc2_ = register_module("inc2", InceptionBlock(11, 2, 4, 4, 2));
    bn2_ = register_module("bn2", KerasBatchNorm(12, bn_momentum));
    c2 = 12;
  } else {
    conv1_ = register_module("conv1", Conv(3, 8, 3));
    bn1_ = register_module("bn1", KerasBatchNorm(8, bn_momentum));
    conv2_ = register_module("conv2", Conv(8, 8, 5));
    bn2_ = register_module("bn2", KerasBatchNorm(8, bn_momentum));
    c2 = 8;
  }
  conv3_ = register_module("conv3", Conv(c2, 16, 5));
  bn3_ = register_module("bn3", KerasBatchNorm(16, bn_momentum));
  conv4_ = register_module("conv4", Conv(16, 16, 5));
  bn4_ = register_module("bn4", KerasBatchNorm(16, bn_momentum));
  fc1_ = register_module("fc1", torch::nn::Linear(16 * 8 * 8, 16));
  fc2_ = register_module("fc2", torch::nn::Linear(16, 1));
}

torch::Tensor MesoNetImpl::forward(torch::Tensor rgb) {
  torch::Tensor x = rgb / 255.0;
  if (inception_) {
    x = KerasMaxPoolSame(bn1_->forward(inc1_->forward(x)), 2);
    x = KerasMaxPoolSame(bn2_->forward(inc2_->forward(x)), 2);
  } else {
    x = KerasMaxPoolSame(bn1_->forward(torch::relu(conv1_->forward(x))), 2);
    x = KerasMaxPoolSame(bn2_->forward(torch::relu(conv2_->forward(x))), 2);
  }
  x = KerasMaxPoolSame(bn3_->forward(torch::relu(conv3_->forward(x))), 2);
  x = KerasMaxPoolSame(bn4_->forward(torch::relu(conv4_->forward(x))), 4);
  x = ShardedDropout(FlattenNhwc(x), 0.5);
  x = F::leaky_relu(fc1_->forward(x), F::LeakyReLUFuncOptions().negative_slope(0.1));
  x = ShardedDropout(x, 0.5);
  return fc2_->forward(x).squeeze(1);
}

std::vector<KerasLayer> MesoNetImpl::KerasLayers() {
  std::vector<KerasLayer> out;
  int conv = 1, bn = 1;
  auto conv_name = [&] { return absl::StrCat("conv2d_", conv++); };
  auto bn_name = [&] { return absl::StrCat("batch_normalization_", bn++); };
  if (inception_) {
    inc1_->AppendKerasLayers(&conv, &out);
    out.push_back(KerasBnBinding(bn_name(), bn1_));
    inc2_->AppendKerasLayers(&conv, &out);
    out.push_back(KerasBnBinding(bn_name(), bn2_));
  } else {
    out.push_back(KerasConvBinding(conv_name(), conv1_->conv->weight, conv1_->conv->bias));
    out.push_back(KerasBnBinding(bn_name(), bn1_));
    out.push_back(KerasConvBinding(conv_name(), conv2_->conv->weight, conv2_->conv->bias));
    out.push_back(KerasBnBinding(bn_name(), bn2_));
  }
  out.push_back(KerasConvBinding(conv_name(), conv3_->conv->weight, conv3_->conv->bias));
  out.push_back(KerasBnBinding(bn_name(), bn3_));
  out.push_back(KerasConvBinding(conv_name(), conv4_->conv->weight, conv4_->conv->bias));
  out.push_back(KerasBnBinding(bn_name(), bn4_));
  out.push_back(KerasDenseBinding("dense_1", fc1_));
  out.push_back(KerasDenseBinding("dense_2", fc2_));
  return out;
}

}  // namespace dfc
