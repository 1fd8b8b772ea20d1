#include "models/resnet50_vggface.h"

#include "absl/strings/str_cat.h"

namespace dfc {
namespace {

KerasConv2d NoBiasConv(int64_t in, int64_t out, int64_t k, int64_t stride, bool same) {
  KerasConv2dOptions o;
  o.in = in;
  o.out = out;
  o.kernel = k;
  o.stride = stride;
  o.same = same;
  o.bias = false;
  return KerasConv2d(o);
}

// Counts one Keras layer; freezes `conv` when it falls before the boundary.
void CountLayer(int* keras_index, int freeze_below, KerasConv2d* conv = nullptr) {
  const int index = (*keras_index)++;
  if (conv != nullptr && index < freeze_below) (*conv)->conv->weight.set_requires_grad(false);
}

}  // namespace

VggBottleneckImpl::VggBottleneckImpl(int stage, int block, int64_t in, int64_t mid, int64_t out, int64_t stride,
                                     bool projection, int* k, int freeze_below, double bn_momentum)
    : prefix_(absl::StrCat("conv", stage, "_", block)) {
  // Creation order in keras-vggface: reduce, bn, relu, 3x3, bn, relu,
  // increase, bn, [proj, bn], add, relu.
  reduce_ = register_module("reduce", NoBiasConv(in, mid, 1, stride, false));
  CountLayer(k, freeze_below, &reduce_);
  reduce_bn_ = register_module("reduce_bn", KerasBatchNorm(mid, bn_momentum));
  CountLayer(k, freeze_below);
  CountLayer(k, freeze_below);  // relu
  conv3x3_ = register_module("conv3x3", NoBiasConv(mid, mid, 3, 1, true));
  CountLayer(k, freeze_below, &conv3x3_);
  conv3x3_bn_ = register_module("conv3x3_bn", KerasBatchNorm(mid, bn_momentum));
  CountLayer(k, freeze_below);
  CountLayer(k, freeze_below);  // relu
  increase_ = register_module("increase", NoBiasConv(mid, out, 1, 1, false));
  CountLayer(k, freeze_below, &increase_);
  increase_bn_ = register_module("increase_bn", KerasBatchNorm(out, bn_momentum));
  CountLayer(k, freeze_below);
  if (projection) {
    proj_ = register_module("proj", NoBiasConv(in, out, 1, stride, false));
    CountLayer(k, freeze_below, &proj_);
    proj_bn_ = register_module("proj_bn", KerasBatchNorm(out, bn_momentum));
    CountLayer(k, freeze_below);
  }
  CountLayer(k, freeze_below);  // add
  CountLayer(k, freeze_below);  // relu
}

torch::Tensor VggBottleneckImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = torch::relu(reduce_bn_->forward(reduce_->forward(x)));
  y = torch::relu(conv3x3_bn_->forward(conv3x3_->forward(y)));
  y = increase_bn_->forward(increase_->forward(y));
  torch::Tensor shortcut = proj_ ? proj_bn_->forward(proj_->forward(x)) : x;
  return torch::relu(y + shortcut);
}

void VggBottleneckImpl::AppendKerasLayers(std::vector<KerasLayer>* out) {
  auto add = [&](const std::string& suffix, const KerasConv2d& conv, const KerasBatchNorm& bn) {
    const std::string name = absl::StrCat(prefix_, suffix);
    out->push_back({name, {{"kernel", conv->conv->weight, KerasLayout::kConvKernel}}});
    out->push_back(KerasBnBinding(name + "/bn", bn));
  };
  add("_1x1_reduce", reduce_, reduce_bn_);
  add("_3x3", conv3x3_, conv3x3_bn_);
  add("_1x1_increase", increase_, increase_bn_);
  if (proj_) add("_1x1_proj", proj_, proj_bn_);
}

ResNet50VggFaceImpl::ResNet50VggFaceImpl(const DetectorOptions& opt) {
  const int freeze = opt.freeze_keras_layers;
  int k = 0;
  CountLayer(&k, freeze);  // Input
  stem_ = register_module("stem", NoBiasConv(3, opt.resnet_width, 7, 2, true));
  CountLayer(&k, freeze, &stem_);
  stem_bn_ = register_module("stem_bn", KerasBatchNorm(opt.resnet_width, opt.bn_momentum));
  CountLayer(&k, freeze);
  CountLayer(&k, freeze);  // relu
  CountLayer(&k, freeze);  // max pool
  blocks_ = register_module("blocks", torch::nn::ModuleList());
  int64_t in = opt.resnet_width;
  for (size_t s = 0; s < opt.resnet_blocks.size(); ++s) {
    const int64_t mid = opt.resnet_width << s;
    const int64_t out = mid * 4;
    for (int b = 0; b < opt.resnet_blocks[s]; ++b) {
      const int64_t stride = (b == 0 && s > 0) ? 2 : 1;
      VggBottleneck block(static_cast<int>(s) + 2, b + 1, in, mid, out, stride, b == 0, &k, freeze, opt.bn_momentum);
      blocks_->push_back(block);
      block_list_.push_back(block);
      in = out;
    }
  }
  head_ = register_module("head", torch::nn::Linear(in, 1));
  mean_bgr_ = register_buffer("mean_bgr", torch::tensor({103.939f, 116.779f, 123.68f}).view({1, 3, 1, 1}));
  for (const KerasLayer& layer : KerasLayers()) {
    for (const KerasWeight& w : layer.weights) {
      if (w.name == "kernel" && !w.target.requires_grad()) frozen_.push_back(layer.name);
    }
  }
}

torch::Tensor ResNet50VggFaceImpl::forward(torch::Tensor rgb) {
  torch::Tensor x = rgb.flip({1}) - mean_bgr_;
  x = torch::relu(stem_bn_->forward(stem_->forward(x)));
  x = torch::max_pool2d(x, {3, 3}, {2, 2});  // Keras default padding: 'valid'
  for (auto& block : block_list_) x = block->forward(x);
  // AveragePooling2D((7, 7)) then GlobalAveragePooling2D: the mean of the
  // 7x7 windows, which at 224 input is one window.
  const int64_t k = std::min<int64_t>({7, x.size(2), x.size(3)});
  x = torch::avg_pool2d(x, {k, k}, {k, k}).mean({2, 3});
  return head_->forward(x).squeeze(1);
}

std::vector<KerasLayer> ResNet50VggFaceImpl::KerasLayers() {
  std::vector<KerasLayer> out;
  out.push_back({"conv1/7x7_s2", {{"kernel", stem_->conv->weight, KerasLayout::kConvKernel}}});
  out.push_back(KerasBnBinding("conv1/7x7_s2/bn", stem_bn_));
  for (auto& block : block_list_) block->AppendKerasLayers(&out);
  KerasLayer head = KerasDenseBinding("dense_1", head_);
  head.optional = true;
  out.push_back(head);
  return out;
}

}  // namespace dfc
