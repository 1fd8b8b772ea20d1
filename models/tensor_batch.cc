#include "models/tensor_batch.h"

namespace dfc {

torch::Tensor PixelsToTensor(const uint8_t* pixels, int64_t n, int64_t size, const torch::Device& device) {
  // No copy on the CPU: the float conversion makes the new tensor.
  torch::Tensor t = torch::from_blob(const_cast<uint8_t*>(pixels), {n, size, size, 3}, torch::kUInt8);
  return PixelsToFloat(t.to(device));
}

torch::Tensor PixelsToDevice(const uint8_t* pixels, int64_t n, int64_t size, const torch::Device& device) {
  torch::Tensor t = torch::from_blob(const_cast<uint8_t*>(pixels), {n, size, size, 3}, torch::kUInt8);
  // from_blob does not own the memory: copy it even on the CPU.
  return device.is_cpu() ? t.clone() : t.to(device);
}

torch::Tensor PixelsToFloat(const torch::Tensor& nhwc_uint8) {
  // NCHW-shaped with NHWC (channels-last) memory, the layout the models'
  // parameters use.
  return nhwc_uint8.permute({0, 3, 1, 2}).to(torch::kFloat32).contiguous(torch::MemoryFormat::ChannelsLast);
}

torch::Device DefaultDevice() {
  return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
}

}  // namespace dfc
