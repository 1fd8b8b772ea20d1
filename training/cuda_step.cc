#include "training/cuda_step.h"

#include "models/tensor_batch.h"

namespace dfc {
namespace {

class PlainUploader : public BatchUploader {
 public:
  explicit PlainUploader(const torch::Device& device) : device_(device) {}
  std::pair<torch::Tensor, torch::Tensor> Upload(const Batch& batch) override {
    return {PixelsToDevice(batch.pixels.data(), batch.count, batch.image_size, device_),
            torch::tensor(batch.labels, torch::kFloat32).to(device_)};
  }

 private:
  const torch::Device device_;
};

}  // namespace

std::unique_ptr<BatchUploader> BatchUploader::Create(const torch::Device& device) {
  if (device.is_cuda()) {
    if (std::unique_ptr<BatchUploader> staged = NewCudaUploader(device)) return staged;
  }
  return std::make_unique<PlainUploader>(device);
}

}  // namespace dfc
