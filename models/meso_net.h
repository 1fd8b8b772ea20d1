#ifndef DFC_MODELS_MESO_NET_H_
#define DFC_MODELS_MESO_NET_H_

#include <string>
#include <vector>

#include "models/detector.h"
#include "models/keras_layers.h"

namespace dfc {

// The MesoNet Inception module (Afchar et al.): four branches (1x1; 1x1 then
// 3x3; 1x1 then 3x3 dilation 2; 1x1 then 3x3 dilation 3), concatenated. The
// four 1x1 convolutions read the same input, so they run as one convolution
// whose output channels are the branches' channels, which is the same
// arithmetic with one kernel launch instead of four.
class InceptionBlockImpl : public torch::nn::Module {
 public:
  InceptionBlockImpl(int64_t in, int64_t a, int64_t b, int64_t c, int64_t d);
  torch::Tensor forward(const torch::Tensor& x);
  // Appends the seven Keras Conv2D layers in creation order, numbering them
  // from *conv_counter.
  void AppendKerasLayers(int* conv_counter, std::vector<KerasLayer>* out);

 private:
  KerasConv2d branch_a_{nullptr}, reduce_b_{nullptr}, reduce_c_{nullptr}, reduce_d_{nullptr};
  KerasConv2d conv_b_{nullptr}, conv_c_{nullptr}, conv_d_{nullptr};
};
TORCH_MODULE(InceptionBlock);

// Meso4 and MesoInception-4 as in the authors' classifiers.py: two feature
// blocks (plain 3x3/5x5 convolutions for Meso4, Inception modules for
// MesoInception-4), two 5x5 conv blocks, then Flatten (NHWC), Dropout(0.5),
// Dense(16), LeakyReLU(0.1), Dropout(0.5), Dense(1). Input 256x256 scaled to [0,1].
class MesoNetImpl : public DetectorImpl {
 public:
  MesoNetImpl(bool inception, double bn_momentum);
  torch::Tensor forward(torch::Tensor rgb) override;
  int input_size() const override { return 256; }
  std::string arch() const override { return inception_ ? "mesoinception4" : "meso4"; }
  std::vector<KerasLayer> KerasLayers() override;

 private:
  const bool inception_;
  InceptionBlock inc1_{nullptr}, inc2_{nullptr};  // MesoInception-4
  KerasConv2d conv1_{nullptr}, conv2_{nullptr};   // Meso4
  KerasConv2d conv3_{nullptr}, conv4_{nullptr};
  KerasBatchNorm bn1_{nullptr}, bn2_{nullptr}, bn3_{nullptr}, bn4_{nullptr};
  torch::nn::Linear fc1_{nullptr}, fc2_{nullptr};
};

}  // namespace dfc

#endif  // DFC_MODELS_MESO_NET_H_
