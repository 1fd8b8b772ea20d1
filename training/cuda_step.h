#ifndef DFC_TRAINING_CUDA_STEP_H_
#define DFC_TRAINING_CUDA_STEP_H_
// The training step's CUDA-only machinery behind device-neutral interfaces:
// CUDA-graph capture and overlapped host-to-device batch copies. The CUDA
// implementations (cuda_step_cuda.cc) are built against a CUDA LibTorch; a
// CPU LibTorch gets cuda_step_cpu.cc (no capture, no staging), and where a
// CUDA toolkit is installed the CUDA file is still compiled (not linked) so
// that it keeps compiling.
#include <functional>
#include <memory>
#include <utility>

#include <torch/torch.h>

#include "absl/status/statusor.h"
#include "data_shards/batch_loader.h"

namespace dfc {

// A captured piece of device work, replayed on the current stream.
class StepGraph {
 public:
  virtual ~StepGraph() = default;
  virtual void Replay() = 0;
};

// How a step is warmed up and captured. PyTorch's rules for CUDA graphs:
// warm-up steps (at least one; they run for real) and the capture happen on
// a side stream that first waits for the current stream's work, and the
// current stream waits for theirs.
class StepGraphBackend {
 public:
  virtual ~StepGraphBackend() = default;
  // Runs `step` now, the way a step before a capture must run.
  virtual void RunWarmup(const std::function<void()>& step) = 0;
  // Records `step` without running it; it must read and write only tensors
  // that outlive the graph, at fixed addresses. An error if capture fails.
  virtual absl::StatusOr<std::unique_ptr<StepGraph>> Capture(const std::function<void()>& step) = 0;
};

// Whether this build can capture CUDA graphs (a CUDA LibTorch).
bool CudaGraphsBuilt();
// CUDA graphs on `device` (a CUDA device); null where CudaGraphsBuilt() is false.
std::unique_ptr<StepGraphBackend> NewCudaGraphBackend(const torch::Device& device);

// Copies batches to the training device. On CUDA the pixels and labels go
// through pinned staging buffers (two, used in turn) and a copy stream, and
// the current (compute) stream waits for the copy with an event: the copy of
// the next batch overlaps the current step's kernels. On CPU the tensors
// wrap a copy of the batch.
class BatchUploader {
 public:
  static std::unique_ptr<BatchUploader> Create(const torch::Device& device);
  virtual ~BatchUploader() = default;
  // uint8 NHWC pixels [n, size, size, 3] and float32 labels [n] on the device,
  // ready for the current stream.
  virtual std::pair<torch::Tensor, torch::Tensor> Upload(const Batch& batch) = 0;
};

// The staged CUDA uploader (null where CudaGraphsBuilt() is false); use
// BatchUploader::Create.
std::unique_ptr<BatchUploader> NewCudaUploader(const torch::Device& device);

}  // namespace dfc

#endif  // DFC_TRAINING_CUDA_STEP_H_
