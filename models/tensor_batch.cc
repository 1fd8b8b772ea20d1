#include "models/tensor_batch.h"

namespace dfc {

torch::Tensor PixelsToTensor(const uint8_t* pixels, int64_t n, int64_t size, const torch::Device& device) {
  torch::Tensor t = torch::from_blob(const_cast<uint8_t*>(pixels), {n, size, size, 3}, torch::kUInt8);
  // Convert on the device: a uint8 copy is a quarter of a float one. The
  // result is NCHW-shaped with NHWC (channels-last) memory, the layout the
  // models' parameters use.
  return t.to(device).permute({0, 3, 1, 2}).to(torch::kFloat32).contiguous(torch::MemoryFormat::ChannelsLast);
}

torch::Device DefaultDevice() {
  return torch::cuda::is_available() ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU);
}

}  // namespace dfc
