// Keras layer semantics on small cases computed by hand.
#include "models/keras_layers.h"

#include <gtest/gtest.h>

#include "models/detector.h"
#include "models/meso_net.h"
#include "models/resnet50_vggface.h"

namespace dfc {
namespace {

torch::Tensor Arange(int64_t n, std::vector<int64_t> shape) {
  return torch::arange(1, n + 1, torch::kFloat32).reshape(shape);
}

TEST(SamePaddingTest, MatchesTensorFlow) {
  EXPECT_EQ(SamePadding(256, 3, 1, 1), std::make_pair(int64_t{1}, int64_t{1}));
  EXPECT_EQ(SamePadding(256, 3, 1, 3), std::make_pair(int64_t{3}, int64_t{3}));  // dilated: eff. kernel 7
  EXPECT_EQ(SamePadding(224, 7, 2, 1), std::make_pair(int64_t{2}, int64_t{3}));  // ResNet stem: odd pixel after
  EXPECT_EQ(SamePadding(5, 2, 2, 1), std::make_pair(int64_t{0}, int64_t{1}));
  EXPECT_EQ(SamePadding(4, 2, 2, 1), std::make_pair(int64_t{0}, int64_t{0}));
}

TEST(KerasConv2dTest, DilatedSameCountsInBoundsTaps) {
  KerasConv2dOptions o;
  o.in = 1;
  o.out = 1;
  o.kernel = 3;
  o.dilation = 2;
  o.bias = false;
  KerasConv2d conv(o);
  torch::NoGradGuard g;
  conv->conv->weight.fill_(1);
  torch::Tensor y = conv->forward(torch::ones({1, 1, 5, 5}));
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{1, 1, 5, 5}));
  // Taps at p-2, p, p+2 inside [0, 4]: 2, 2, 3, 2, 2 per axis.
  const float c[5] = {2, 2, 3, 2, 2};
  for (int i = 0; i < 5; ++i)
    for (int j = 0; j < 5; ++j) EXPECT_FLOAT_EQ(y[0][0][i][j].item<float>(), c[i] * c[j]) << i << "," << j;
}

TEST(KerasConv2dTest, StrideTwoSamePadsAfterNotBefore) {
  KerasConv2dOptions o;
  o.in = 1;
  o.out = 1;
  o.kernel = 3;
  o.stride = 2;
  o.bias = false;
  KerasConv2d conv(o);
  torch::NoGradGuard g;
  conv->conv->weight.fill_(1);
  // a[r][c] = 4r + c + 1; TF pads 0 before and 1 after, so the first window
  // is rows 0-2 x cols 0-2 (PyTorch's symmetric padding=1 would give 14).
  torch::Tensor y = conv->forward(Arange(16, {1, 1, 4, 4}));
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{1, 1, 2, 2}));
  EXPECT_FLOAT_EQ(y[0][0][0][0].item<float>(), 54);
  EXPECT_FLOAT_EQ(y[0][0][0][1].item<float>(), 45);
  EXPECT_FLOAT_EQ(y[0][0][1][0].item<float>(), 72);
  EXPECT_FLOAT_EQ(y[0][0][1][1].item<float>(), 54);
}

TEST(KerasMaxPoolTest, SamePaddingNeverWins) {
  torch::Tensor x = -Arange(9, {1, 1, 3, 3});  // -1 .. -9
  torch::Tensor y = KerasMaxPoolSame(x, 2);
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{1, 1, 2, 2}));
  EXPECT_FLOAT_EQ(y[0][0][0][0].item<float>(), -1);
  EXPECT_FLOAT_EQ(y[0][0][0][1].item<float>(), -3);
  EXPECT_FLOAT_EQ(y[0][0][1][0].item<float>(), -7);
  EXPECT_FLOAT_EQ(y[0][0][1][1].item<float>(), -9);
  // Pool 4 on 32 -> 8, as MesoNet's last block.
  EXPECT_EQ(KerasMaxPoolSame(torch::zeros({1, 1, 32, 32}), 4).size(2), 8);
}

TEST(FlattenTest, NhwcOrder) {
  // x[0][c][h][w] = 4c + 2h + w; Keras flattens (h, w, c).
  torch::Tensor x = torch::arange(8, torch::kFloat32).reshape({1, 2, 2, 2});
  torch::Tensor y = FlattenNhwc(x);
  const float expected[8] = {0, 4, 1, 5, 2, 6, 3, 7};
  for (int i = 0; i < 8; ++i) EXPECT_FLOAT_EQ(y[0][i].item<float>(), expected[i]);
}

TEST(KerasBatchNormTest, EpsilonAndMomentum) {
  auto bn = KerasBatchNorm(1);
  bn->eval();
  EXPECT_NEAR(bn->forward(torch::ones({1, 1, 1, 1})).item<float>(), 1.0 / std::sqrt(1.001), 1e-7);
  bn->train();
  // Batch {1, 3}: mean 2, unbiased variance 2; Keras momentum 0.99.
  torch::Tensor x = torch::tensor({1.0f, 3.0f}).reshape({2, 1, 1, 1});
  bn->forward(x);
  EXPECT_NEAR(bn->running_mean.item<float>(), 0.02, 1e-7);
  EXPECT_NEAR(bn->running_var.item<float>(), 1.01, 1e-6);
}

TEST(InceptionBlockTest, MatchesTheBranchesOfClassifiersPy) {
  torch::manual_seed(0);
  InceptionBlock block(3, 1, 4, 4, 2);
  std::vector<KerasLayer> layers;
  int n = 1;
  block->AppendKerasLayers(&n, &layers);
  ASSERT_EQ(layers.size(), 7u);
  EXPECT_EQ(layers[0].name, "conv2d_1");
  EXPECT_EQ(layers[6].name, "conv2d_7");
  {
    torch::NoGradGuard g;
    for (auto& p : block->parameters()) p.uniform_(-0.5, 0.5);
  }
  torch::Tensor x = torch::rand({2, 3, 9, 9});
  torch::Tensor y = block->forward(x);
  // The same block written branch by branch with the per-branch Keras weights.
  auto conv = [](const torch::Tensor& in, const KerasLayer& l, int64_t dilation) {
    const int64_t k = l.weights[0].target.size(2);
    return torch::relu(torch::conv2d(in, l.weights[0].target, l.weights[1].target, 1, dilation * (k / 2), dilation));
  };
  torch::Tensor ref = torch::cat({conv(x, layers[0], 1), conv(conv(x, layers[1], 1), layers[2], 1),
                                  conv(conv(x, layers[3], 1), layers[4], 2), conv(conv(x, layers[5], 1), layers[6], 3)},
                                 1);
  EXPECT_TRUE(torch::allclose(y, ref, 1e-5, 1e-6));
}

TEST(MesoNetTest, ShapesDropoutAndLeakyRelu) {
  for (const char* arch : {"meso4", "mesoinception4"}) {
    auto model = MakeDetector(arch);
    ASSERT_TRUE(model.ok());
    torch::Tensor x = torch::rand({2, 3, 256, 256}) * 255;
    (*model)->eval();
    torch::Tensor a = (*model)->forward(x), b = (*model)->forward(x);
    ASSERT_EQ(a.sizes(), (std::vector<int64_t>{2}));
    EXPECT_TRUE(torch::equal(a, b));  // no dropout in inference
    (*model)->train();
    torch::manual_seed(1);
    torch::Tensor c = (*model)->forward(x);
    torch::manual_seed(2);
    EXPECT_FALSE(torch::equal(c, (*model)->forward(x)));  // dropout in training
  }
  // Keras names: Meso4 has 4 conv, 4 BN, 2 dense; MesoInception-4 16 conv.
  auto inc = MakeDetector("mesoinception4");
  int convs = 0;
  for (const auto& l : (*inc)->KerasLayers()) convs += l.name.rfind("conv2d_", 0) == 0;
  EXPECT_EQ(convs, 16);
}

TEST(ResNetTest, KerasNamesAndFreezeBoundary) {
  auto model = MakeDetector("resnet50-vggface");
  ASSERT_TRUE(model.ok());
  auto* resnet = dynamic_cast<ResNet50VggFaceImpl*>(model->get());
  ASSERT_NE(resnet, nullptr);
  const auto& frozen = resnet->frozen_layers();
  ASSERT_FALSE(frozen.empty());
  EXPECT_EQ(frozen.front(), "conv1/7x7_s2");
  // model.layers[:100]: the 100th Keras layer is the Add of block conv4_2, so
  // its last conv (the 1x1 increase) is the last one frozen.
  EXPECT_EQ(frozen.back(), "conv4_2_1x1_increase");
  // stem + stage 2 (3 blocks of 3 convs + proj) + stage 3 (4 blocks + proj) + conv4_1 (+ proj) + conv4_2
  EXPECT_EQ(frozen.size(), 1u + (3 * 3 + 1) + (4 * 3 + 1) + (3 + 1) + 3);
  int convs = 0, trainable_bn = 0, bns = 0;
  for (const auto& l : (*model)->KerasLayers()) {
    if (l.name.size() > 3 && l.name.substr(l.name.size() - 3) == "/bn") {
      ++bns;
      trainable_bn += l.weights[0].target.requires_grad();
    } else if (l.name != "dense_1") {
      ++convs;
      const bool frozen_here = std::find(frozen.begin(), frozen.end(), l.name) != frozen.end();
      EXPECT_EQ(l.weights[0].target.requires_grad(), !frozen_here) << l.name;
    }
  }
  EXPECT_EQ(convs, 53);
  EXPECT_EQ(bns, 53);
  EXPECT_EQ(trainable_bn, 53);  // BatchNorm always trains
  torch::NoGradGuard g;
  (*model)->eval();
  EXPECT_EQ((*model)->forward(torch::rand({1, 3, 224, 224}) * 255).sizes(), (std::vector<int64_t>{1}));
}

TEST(ResNetTest, CaffePreprocessingInsideTheModel) {
  DetectorOptions small;
  small.resnet_width = 4;
  small.resnet_blocks = {1, 1, 1, 1};
  auto model = MakeDetector("resnet50-vggface", small);
  ASSERT_TRUE(model.ok());
  (*model)->eval();
  torch::NoGradGuard g;
  // Make the stem read only its first (BGR: blue) channel at the kernel centre.
  auto layers = (*model)->KerasLayers();
  ASSERT_EQ(layers[0].name, "conv1/7x7_s2");
  torch::Tensor stem = layers[0].weights[0].target;
  stem.zero_();
  stem.select(1, 0).select(1, 3).select(1, 3).fill_(1);
  auto image = [](float blue) {
    torch::Tensor x = torch::rand({1, 3, 64, 64}) * 255;
    x.select(1, 2).fill_(blue);
    return x;
  };
  // Input blue equal to the caffe mean 103.939 is zero after preprocessing,
  // whatever red and green hold; any other blue is not.
  torch::Tensor a = (*model)->forward(image(103.939f));
  torch::Tensor b = (*model)->forward(image(103.939f));
  torch::Tensor c = (*model)->forward(image(140.0f));
  EXPECT_TRUE(torch::allclose(a, b, 1e-5, 1e-6));
  EXPECT_FALSE(torch::allclose(a, c, 1e-5, 1e-6));
}

TEST(DetectorFactoryTest, UnknownModelNamesTheChoices) {
  auto r = MakeDetector("vgg16");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("vgg16"), std::string::npos);
  EXPECT_NE(r.status().message().find("mesoinception4"), std::string::npos);
}

}  // namespace
}  // namespace dfc
