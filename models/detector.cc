#include "models/detector.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "models/meso_net.h"
#include "models/resnet50_vggface.h"

namespace dfc {

KerasLayer KerasConvBinding(const std::string& name, torch::Tensor kernel, torch::Tensor bias) {
  return {name, {{"kernel", kernel, KerasLayout::kConvKernel}, {"bias", bias, KerasLayout::kVector}}};
}

KerasLayer KerasBnBinding(const std::string& name, const KerasBatchNorm& bn) {
  return {name,
          {{"gamma", bn->weight, KerasLayout::kVector},
           {"beta", bn->bias, KerasLayout::kVector},
           {"moving_mean", bn->running_mean, KerasLayout::kVector},
           {"moving_variance", bn->running_var, KerasLayout::kVector}}};
}

KerasLayer KerasDenseBinding(const std::string& name, const torch::nn::Linear& fc) {
  return {name, {{"kernel", fc->weight, KerasLayout::kDenseKernel}, {"bias", fc->bias, KerasLayout::kVector}}};
}

void DetectorImpl::SetBatchNormAllReduce(const AllReduceSumFn& fn) {
  for (auto& m : modules()) {
    if (auto* bn = m->as<KerasBatchNormImpl>()) bn->set_all_reduce(fn);
  }
}

void DetectorImpl::SetBatchNormMomentumOverride(double momentum) {
  for (auto& m : modules()) {
    if (auto* bn = m->as<KerasBatchNormImpl>()) bn->set_momentum_override(momentum);
  }
}

torch::Tensor DetectorImpl::ShardedDropout(const torch::Tensor& x, double p) {
  if (!is_training() || p == 0) return x;
  const int64_t n = x.size(0);
  const int64_t global = std::max(shard_global_batch_, shard_offset_ + n);
  std::vector<int64_t> shape = x.sizes().vec();
  shape[0] = global;
  torch::Tensor keep = torch::empty(shape, x.options()).bernoulli_(1 - p).narrow(0, shard_offset_, n);
  return x * keep / (1 - p);
}

const std::vector<std::string>& DetectorNames() {
  static const std::vector<std::string> kNames = {"mesoinception4", "meso4", "resnet50-vggface"};
  return kNames;
}

absl::StatusOr<Detector> MakeDetector(const std::string& arch, const DetectorOptions& options) {
  Detector model;
  if (arch == "mesoinception4" || arch == "meso4") {
    if (options.bn_momentum < 0 || options.bn_momentum >= 1) {
      return absl::InvalidArgumentError("bn_momentum must be in [0, 1)");
    }
    model = std::make_shared<MesoNetImpl>(arch == "mesoinception4", options.bn_momentum);
  } else if (arch == "resnet50-vggface") {
    if (options.resnet_width < 1 || options.resnet_blocks.size() != 4) {
      return absl::InvalidArgumentError("resnet50-vggface needs a positive width and 4 stages");
    }
    model = std::make_shared<ResNet50VggFaceImpl>(options);
  } else {
    return absl::InvalidArgumentError(absl::StrCat("unknown model '", arch, "' (known: ",
                                                   absl::StrJoin(DetectorNames(), ", "), ")"));
  }
  // Keras initialisers: glorot_uniform kernels, zero biases, so that training
  // from scratch starts where the notebook's did.
  torch::NoGradGuard no_grad;
  for (KerasLayer& layer : model->KerasLayers()) {
    for (KerasWeight& w : layer.weights) {
      if (w.name != "kernel") continue;
      // Views of fused parameters are initialised slice by slice, each with
      // its own Keras fan-in/fan-out.
      torch::Tensor t = w.target;
      int64_t fan_in, fan_out;
      if (w.layout == KerasLayout::kConvKernel) {
        const int64_t rf = t.size(2) * t.size(3);
        fan_in = t.size(1) * rf;
        fan_out = t.size(0) * rf;
      } else {
        fan_in = t.size(1);
        fan_out = t.size(0);
      }
      const double limit = std::sqrt(6.0 / static_cast<double>(fan_in + fan_out));
      t.uniform_(-limit, limit);
    }
    for (KerasWeight& w : layer.weights) {
      if (w.name == "bias") w.target.zero_();
    }
  }
  // Channels-last (NHWC) convolutions run on oneDNN's direct kernels: 1.7x
  // faster MesoInception-4 training on CPU (docs/BENCH.md). Inputs arrive
  // NHWC from the decoder, so they need no copy either.
  for (auto& p : model->parameters()) {
    if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
  }
  return model;
}

}  // namespace dfc
