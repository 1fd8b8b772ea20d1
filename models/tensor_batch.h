#ifndef DFC_MODELS_TENSOR_BATCH_H_
#define DFC_MODELS_TENSOR_BATCH_H_

#include <cstdint>

#include <torch/torch.h>

namespace dfc {

// n RGB HWC uint8 images of size x size -> float NCHW [0, 255] on `device`,
// the input every Detector takes.
torch::Tensor PixelsToTensor(const uint8_t* pixels, int64_t n, int64_t size, const torch::Device& device);
// Its two halves: the uint8 NHWC pixels on `device` (a quarter of a float
// copy), and their conversion there to float NCHW with channels-last memory.
torch::Tensor PixelsToDevice(const uint8_t* pixels, int64_t n, int64_t size, const torch::Device& device);
torch::Tensor PixelsToFloat(const torch::Tensor& nhwc_uint8);

// The device training and inference use: CUDA when available, else CPU.
torch::Device DefaultDevice();

}  // namespace dfc

#endif  // DFC_MODELS_TENSOR_BATCH_H_
