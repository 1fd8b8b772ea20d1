#ifndef DFC_MODELS_RESNET50_VGGFACE_H_
#define DFC_MODELS_RESNET50_VGGFACE_H_

#include <string>
#include <vector>

#include "models/detector.h"
#include "models/keras_layers.h"

namespace dfc {

// One keras-vggface bottleneck block: conv<stage>_<block>_1x1_reduce (carries
// the stride), _3x3, _1x1_increase, each with "/bn", and in a conv block the
// _1x1_proj shortcut. No conv biases.
class VggBottleneckImpl : public torch::nn::Module {
 public:
  // `keras_index` is the running count of Keras layers; convs whose index is
  // below `freeze_below` are frozen.
  VggBottleneckImpl(int stage, int block, int64_t in, int64_t mid, int64_t out, int64_t stride, bool projection,
                    int* keras_index, int freeze_below, double bn_momentum);
  torch::Tensor forward(const torch::Tensor& x);
  void AppendKerasLayers(std::vector<KerasLayer>* out);

 private:
  const std::string prefix_;
  KerasConv2d reduce_{nullptr}, conv3x3_{nullptr}, increase_{nullptr}, proj_{nullptr};
  KerasBatchNorm reduce_bn_{nullptr}, conv3x3_bn_{nullptr}, increase_bn_{nullptr}, proj_bn_{nullptr};
};
TORCH_MODULE(VggBottleneck);

// keras-vggface RESNET50 (include_top=False, pooling='avg') + Dense(1,
// sigmoid), with caffe preprocessing inside (RGB->BGR, minus
// 103.939/116.779/123.68 on 0..255 input). 224x224 input.
class ResNet50VggFaceImpl : public DetectorImpl {
 public:
  explicit ResNet50VggFaceImpl(const DetectorOptions& options);
  torch::Tensor forward(torch::Tensor rgb) override;
  int input_size() const override { return 224; }
  std::string arch() const override { return "resnet50-vggface"; }
  std::vector<KerasLayer> KerasLayers() override;

  // Names of the Keras layers frozen by the freeze boundary, in order.
  const std::vector<std::string>& frozen_layers() const { return frozen_; }

 private:
  KerasConv2d stem_{nullptr};
  KerasBatchNorm stem_bn_{nullptr};
  torch::nn::ModuleList blocks_;
  std::vector<VggBottleneck> block_list_;
  torch::nn::Linear head_{nullptr};
  torch::Tensor mean_bgr_;
  std::vector<std::string> frozen_;
};

}  // namespace dfc

#endif  // DFC_MODELS_RESNET50_VGGFACE_H_
