// cuda_step.h for a CUDA LibTorch.
#include <cstring>

#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "absl/strings/str_cat.h"
#include "training/cuda_step.h"

namespace dfc {
namespace {

class CudaStepGraph : public StepGraph {
 public:
  void Replay() override { graph_.replay(); }
  at::cuda::CUDAGraph& graph() { return graph_; }

 private:
  at::cuda::CUDAGraph graph_;
};

// Two pinned staging slots used in turn; a slot is refilled only after its
// previous copy has finished (its event), which with two slots is the copy
// of the batch before last.
class CudaUploader : public BatchUploader {
 public:
  explicit CudaUploader(const torch::Device& device)
      : device_(device), copy_stream_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index())) {}

  std::pair<torch::Tensor, torch::Tensor> Upload(const Batch& batch) override {
    c10::cuda::CUDAGuard device_guard(device_);
    Slot& slot = slots_[next_];
    next_ ^= 1;
    slot.copied.synchronize();  // its last copy has read the staging memory
    const int64_t n = batch.count, size = batch.image_size;
    const int64_t bytes = n * size * size * 3;
    if (!slot.pixels.defined() || slot.pixels.numel() < bytes) {
      slot.pixels = torch::empty({bytes}, torch::TensorOptions().dtype(torch::kUInt8).pinned_memory(true));
    }
    if (!slot.labels.defined() || slot.labels.numel() < n) {
      slot.labels = torch::empty({n}, torch::TensorOptions().dtype(torch::kFloat32).pinned_memory(true));
    }
    std::memcpy(slot.pixels.data_ptr<uint8_t>(), batch.pixels.data(), static_cast<size_t>(bytes));
    float* labels = slot.labels.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) labels[i] = static_cast<float>(batch.labels[static_cast<size_t>(i)]);

    const c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(device_.index());
    torch::Tensor pixels, y;
    {
      c10::cuda::CUDAStreamGuard on_copy_stream(copy_stream_);
      const auto on_device = torch::TensorOptions().device(device_);
      pixels = torch::empty({n, size, size, 3}, on_device.dtype(torch::kUInt8));
      y = torch::empty({n}, on_device.dtype(torch::kFloat32));
      pixels.view({-1}).copy_(slot.pixels.narrow(0, 0, bytes), /*non_blocking=*/true);
      y.copy_(slot.labels.narrow(0, 0, n), /*non_blocking=*/true);
      slot.copied.record(copy_stream_);
    }
    slot.copied.block(compute);
    // Allocated on the copy stream, used on the compute stream: the caching
    // allocator must not hand the memory out again before the compute
    // stream is done with it.
    c10::cuda::CUDACachingAllocator::recordStream(pixels.storage().data_ptr(), compute);
    c10::cuda::CUDACachingAllocator::recordStream(y.storage().data_ptr(), compute);
    return {pixels, y};
  }

 private:
  struct Slot {
    torch::Tensor pixels, labels;  // pinned host memory
    at::cuda::CUDAEvent copied;
  };
  const torch::Device device_;
  c10::cuda::CUDAStream copy_stream_;
  Slot slots_[2];
  int next_ = 0;
};

// One side stream for the warm-up steps and the capture.
class CudaGraphBackend : public StepGraphBackend {
 public:
  explicit CudaGraphBackend(const torch::Device& device)
      : device_(device), side_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device.index())) {}

  void RunWarmup(const std::function<void()>& step) override {
    c10::cuda::CUDAGuard device_guard(device_);
    OnSide([&] { step(); });
  }

  absl::StatusOr<std::unique_ptr<StepGraph>> Capture(const std::function<void()>& step) override {
    c10::cuda::CUDAGuard device_guard(device_);
    auto graph = std::make_unique<CudaStepGraph>();
    c10::cuda::device_synchronize();
    try {
      OnSide([&] {
        graph->graph().capture_begin();
        step();
        graph->graph().capture_end();
      });
    } catch (const std::exception& e) {
      // The same model and batch shape would fail the same way again:
      // permanent, not retried by the worker.
      return absl::FailedPreconditionError(absl::StrCat("CUDA graph capture of the training step failed (run with "
                                                        "--cuda-graphs off to train without graphs): ", e.what()));
    }
    return std::unique_ptr<StepGraph>(std::move(graph));
  }

 private:
  // `work` on the side stream, ordered after the current stream's work and
  // before what the current stream does next.
  void OnSide(const std::function<void()>& work) {
    const c10::cuda::CUDAStream current = c10::cuda::getCurrentCUDAStream(device_.index());
    at::cuda::CUDAEvent before, after;
    before.record(current);
    before.block(side_);
    {
      c10::cuda::CUDAStreamGuard on_side(side_);
      work();
    }
    after.record(side_);
    after.block(current);
  }

  const torch::Device device_;
  c10::cuda::CUDAStream side_;
};

}  // namespace

bool CudaGraphsBuilt() { return true; }

std::unique_ptr<StepGraphBackend> NewCudaGraphBackend(const torch::Device& device) {
  return std::make_unique<CudaGraphBackend>(device);
}

std::unique_ptr<BatchUploader> NewCudaUploader(const torch::Device& device) {
  return std::make_unique<CudaUploader>(device);
}

}  // namespace dfc
