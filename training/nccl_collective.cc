#include "training/nccl_collective.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"

namespace dfc {
namespace {

absl::Status CudaStatus(const char* what, cudaError_t e) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

absl::Status NcclStatus(const char* what, ncclResult_t r) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
}

absl::StatusOr<ncclDataType_t> NcclType(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Float: return ncclFloat32;
    case c10::ScalarType::Double: return ncclFloat64;
    case c10::ScalarType::Half: return ncclFloat16;
    case c10::ScalarType::Int: return ncclInt32;
    case c10::ScalarType::Long: return ncclInt64;
    default:
      return absl::InvalidArgumentError(absl::StrCat("nccl: unsupported tensor type ", c10::toString(t)));
  }
}

// One collective on the communicator's stream: a host-staged or in-place
// operation whose completion is an event. Keeps its tensors alive until then.
class NcclWork : public CollectiveWork {
 public:
  NcclWork(cudaEvent_t done, ncclComm_t comm, std::chrono::milliseconds timeout, torch::Tensor keep,
           torch::Tensor copy_back_to)
      : done_(done), comm_(comm), timeout_(timeout), keep_(std::move(keep)), dst_(std::move(copy_back_to)) {}
  ~NcclWork() override {
    if (done_ != nullptr) {
      (void)Wait();
      cudaEventDestroy(done_);
    }
  }
  absl::Status Wait() override {
    if (waited_) return status_;
    waited_ = true;
    // Poll, so that a dead peer ends in an error after the timeout, not a hang.
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    cudaError_t e;
    while ((e = cudaEventQuery(done_)) == cudaErrorNotReady) {
      if (std::chrono::steady_clock::now() > deadline) {
        ncclCommAbort(comm_);
        status_ = absl::DeadlineExceededError(
            absl::StrCat("nccl: collective did not finish in ", timeout_.count(), " ms (a rank died?)"));
        return status_;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    status_ = CudaStatus("nccl: collective failed", e);
    if (status_.ok() && dst_.defined()) dst_.copy_(keep_);
    return status_;
  }

 private:
  cudaEvent_t done_;
  ncclComm_t comm_;
  const std::chrono::milliseconds timeout_;
  torch::Tensor keep_, dst_;
  bool waited_ = false;
  absl::Status status_;
};

class NcclCollective : public Collective {
 public:
  NcclCollective(c10::intrusive_ptr<c10d::Store> store, ncclComm_t comm, cudaStream_t stream, int rank, int world,
                 std::chrono::milliseconds timeout)
      : store_(std::move(store)), comm_(comm), stream_(stream), rank_(rank), world_(world), timeout_(timeout) {}
  ~NcclCollective() override {
    cudaStreamSynchronize(stream_);
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int world_size() const override { return world_; }

  std::unique_ptr<CollectiveWork> AllReduceSumAsync(torch::Tensor t) override {
    auto work = Launch(std::move(t), [&](void* p, size_t n, ncclDataType_t type) {
      return ncclAllReduce(p, p, n, type, ncclSum, comm_, stream_);
    });
    if (!work.ok()) return FailedCollectiveWork(work.status());
    return std::move(*work);
  }

  absl::Status Broadcast(std::vector<torch::Tensor> tensors, int root) override {
    for (torch::Tensor& t : tensors) {
      auto work = Launch(t, [&](void* p, size_t n, ncclDataType_t type) {
        return ncclBroadcast(p, p, n, type, root, comm_, stream_);
      });
      if (!work.ok()) return work.status();
      if (absl::Status st = (*work)->Wait(); !st.ok()) return st;
    }
    return absl::OkStatus();
  }

  absl::Status Barrier() override {
    return AllReduceSum(torch::zeros({1}, torch::kFloat32));
  }

 private:
  // Runs `op` on the tensor's data in device memory: in place for a CUDA
  // tensor (after the work queued on the default stream), otherwise on a
  // stream-ordered device copy of a contiguous host copy.
  template <typename Op>
  absl::StatusOr<std::unique_ptr<CollectiveWork>> Launch(torch::Tensor t, Op op) {
    auto type = NcclType(t.scalar_type());
    if (!type.ok()) return type.status();
    torch::Tensor c = t.contiguous();
    torch::Tensor copy_back = c.is_same(t) ? torch::Tensor() : t;
    const size_t n = static_cast<size_t>(c.numel());
    const size_t bytes = n * c.element_size();
    cudaEvent_t done = nullptr;
    if (absl::Status st = CudaStatus("nccl: event", cudaEventCreateWithFlags(&done, cudaEventDisableTiming)); !st.ok()) {
      return st;
    }
    auto fail = [&](absl::Status st) {
      cudaEventDestroy(done);
      return st;
    };
    if (c.is_cuda()) {
      cudaEvent_t ready = nullptr;
      absl::Status st = CudaStatus("nccl: event", cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
      if (st.ok()) st = CudaStatus("nccl: record", cudaEventRecord(ready, cudaStreamLegacy));
      if (st.ok()) st = CudaStatus("nccl: wait", cudaStreamWaitEvent(stream_, ready, 0));
      if (ready != nullptr) cudaEventDestroy(ready);
      if (st.ok()) st = NcclStatus("nccl", op(c.data_ptr(), n, *type));
      if (st.ok()) st = CudaStatus("nccl: record", cudaEventRecord(done, stream_));
      if (!st.ok()) return fail(st);
    } else {
      void* dev = nullptr;
      absl::Status st = CudaStatus("nccl: device buffer", cudaMallocAsync(&dev, bytes, stream_));
      if (st.ok()) st = CudaStatus("nccl: copy to device", cudaMemcpyAsync(dev, c.data_ptr(), bytes, cudaMemcpyHostToDevice, stream_));
      if (st.ok()) st = NcclStatus("nccl", op(dev, n, *type));
      if (st.ok()) st = CudaStatus("nccl: copy to host", cudaMemcpyAsync(c.data_ptr(), dev, bytes, cudaMemcpyDeviceToHost, stream_));
      if (dev != nullptr) cudaFreeAsync(dev, stream_);
      if (st.ok()) st = CudaStatus("nccl: record", cudaEventRecord(done, stream_));
      if (!st.ok()) return fail(st);
    }
    return std::unique_ptr<CollectiveWork>(new NcclWork(done, comm_, timeout_, c, copy_back));
  }

  c10::intrusive_ptr<c10d::Store> store_;
  ncclComm_t comm_;
  cudaStream_t stream_;
  const int rank_, world_;
  const std::chrono::milliseconds timeout_;
};

}  // namespace

std::string NcclVersion() {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "unknown";
  // NCCL >= 2.9 encodes major*10000 + minor*100 + patch.
  return absl::StrCat(v / 10000, ".", (v / 100) % 100, ".", v % 100);
}

absl::StatusOr<int> CudaDeviceCount() {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    return absl::FailedPreconditionError(absl::StrCat("no CUDA device: ", cudaGetErrorString(e)));
  }
  return n;
}

absl::StatusOr<std::unique_ptr<Collective>> ConnectNccl(c10::intrusive_ptr<c10d::Store> store,
                                                        const CollectiveOptions& o) {
  auto devices = CudaDeviceCount();
  if (!devices.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("the nccl backend needs a GPU: ", devices.status().message()));
  }
  if (*devices == 0) return absl::FailedPreconditionError("the nccl backend needs a GPU: this process sees none");
  if (absl::Status st = CudaStatus("nccl: cudaSetDevice(0)", cudaSetDevice(0)); !st.ok()) return st;
  ncclUniqueId id;
  const std::string key = "dfc/nccl_unique_id";
  try {
    if (o.rank == 0) {
      if (absl::Status st = NcclStatus("ncclGetUniqueId", ncclGetUniqueId(&id)); !st.ok()) return st;
      std::vector<uint8_t> bytes(reinterpret_cast<uint8_t*>(&id), reinterpret_cast<uint8_t*>(&id) + sizeof(id));
      store->set(key, bytes);
    } else {
      std::vector<uint8_t> bytes = store->get(key);  // waits up to the store's timeout
      if (bytes.size() != sizeof(id)) return absl::DataLossError("nccl: the published unique id has the wrong size");
      std::memcpy(&id, bytes.data(), sizeof(id));
    }
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("nccl: rendezvous through the store failed: ", e.what()));
  }
  ncclComm_t comm = nullptr;
  if (absl::Status st = NcclStatus("ncclCommInitRank", ncclCommInitRank(&comm, o.world_size, id, o.rank)); !st.ok()) {
    return st;
  }
  cudaStream_t stream = nullptr;
  if (absl::Status st = CudaStatus("nccl: stream", cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking)); !st.ok()) {
    ncclCommDestroy(comm);
    return st;
  }
  return std::unique_ptr<Collective>(new NcclCollective(std::move(store), comm, stream, o.rank, o.world_size, o.timeout));
}

}  // namespace dfc
