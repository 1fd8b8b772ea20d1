#ifndef DFC_MODELS_DETECTOR_H_
#define DFC_MODELS_DETECTOR_H_

#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "models/keras_layers.h"

namespace dfc {

// How a Keras weight is laid out relative to its LibTorch target.
enum class KerasLayout {
  kConvKernel,   // Keras HWIO  -> torch OIHW
  kDenseKernel,  // Keras (in, out) -> torch (out, in)
  kVector,       // bias, gamma, beta, moving_mean, moving_variance
};

// One Keras weight (e.g. "kernel") and the tensor it is copied into. The
// target may be a view (a slice of a fused parameter).
struct KerasWeight {
  std::string name;
  torch::Tensor target;
  KerasLayout layout = KerasLayout::kVector;
};

// One Keras layer with weights, named as Keras named it.
struct KerasLayer {
  std::string name;
  std::vector<KerasWeight> weights;
  // A layer the file may lack (the classifier head on a no-top backbone).
  bool optional = false;
};

// Bindings for the common Keras layer kinds (weights named as Keras names them).
KerasLayer KerasConvBinding(const std::string& name, torch::Tensor kernel, torch::Tensor bias);
KerasLayer KerasBnBinding(const std::string& name, const KerasBatchNorm& bn);
KerasLayer KerasDenseBinding(const std::string& name, const torch::nn::Linear& fc);

// A binary deepfake detector. Input: float NCHW RGB in [0, 255] at
// input_size() x input_size(); the model applies its own preprocessing (x/255
// or caffe BGR mean subtraction). Output: one logit per image; P(real) is its
// sigmoid. Not thread-safe; one owner trains or evaluates it.
class DetectorImpl : public torch::nn::Module {
 public:
  virtual torch::Tensor forward(torch::Tensor rgb) = 0;
  virtual int input_size() const = 0;
  virtual std::string arch() const = 0;
  // Every Keras layer with weights, in the order the Keras model creates them.
  virtual std::vector<KerasLayer> KerasLayers() = 0;

  // Data-parallel training: this rank's images are rows [offset, offset + n)
  // of a global batch of `global_batch` rows. Models whose training draws
  // random numbers per image (dropout) draw them for the global batch and
  // keep their rows, so N ranks reproduce one process on the whole batch.
  void SetBatchShard(int64_t offset, int64_t global_batch) {
    shard_offset_ = offset;
    shard_global_batch_ = global_batch;
  }
  // Synchronises every BatchNorm layer's statistics through `fn` (empty: local).
  void SetBatchNormAllReduce(const AllReduceSumFn& fn);
  // Every BatchNorm layer's momentum override (see KerasBatchNormImpl); -1 clears.
  void SetBatchNormMomentumOverride(double momentum);

 protected:
  // Dropout whose mask is drawn for the global batch (see SetBatchShard).
  torch::Tensor ShardedDropout(const torch::Tensor& x, double p);

 private:
  int64_t shard_offset_ = 0;
  int64_t shard_global_batch_ = 0;  // 0: the local batch is the whole batch
};
using Detector = std::shared_ptr<DetectorImpl>;

// Options for MakeDetector.
struct DetectorOptions {
  // ResNet only: channel width of the first stage (64 in ResNet-50) and the
  // number of blocks per stage ({3, 4, 6, 3} in ResNet-50). Smaller values make
  // the small configurations that tests use; Keras names stay the same.
  int resnet_width = 64;
  std::vector<int> resnet_blocks = {3, 4, 6, 3};
  // ResNet only: the non-BatchNorm layers among the first N entries of Keras's
  // layer list are frozen (the notebook's model.layers[:100]). With N=100 the
  // boundary falls inside block conv4_2: conv4_2_1x1_increase is the last
  // frozen conv and conv4_3_1x1_reduce the first trainable one.
  int freeze_keras_layers = 100;
  // BatchNormalization moving-average momentum, Keras convention (0.99 is
  // Keras's default: the statistics average over ~100 steps, so a run of a
  // few hundred steps evaluates with partly initial statistics).
  double bn_momentum = 0.99;
};

// The models DFC knows: "mesoinception4", "meso4", "resnet50-vggface".
const std::vector<std::string>& DetectorNames();
absl::StatusOr<Detector> MakeDetector(const std::string& arch, const DetectorOptions& options = {});

}  // namespace dfc

#endif  // DFC_MODELS_DETECTOR_H_
