// cuda_step.h's CUDA half for a CPU LibTorch: nothing to capture or stage.
#include "training/cuda_step.h"

namespace dfc {

bool CudaGraphsBuilt() { return false; }
std::unique_ptr<StepGraphBackend> NewCudaGraphBackend(const torch::Device&) { return nullptr; }
std::unique_ptr<BatchUploader> NewCudaUploader(const torch::Device&) { return nullptr; }

}  // namespace dfc
