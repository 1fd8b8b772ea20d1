#ifndef DFC_TRAINING_COLLECTIVE_H_
#define DFC_TRAINING_COLLECTIVE_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "absl/status/statusor.h"

namespace dfc {

// Where and how a rank joins its job's process group.
struct CollectiveOptions {
  // The c10d TCPStore that rank 0 serves and every rank connects to.
  std::string store_host = "127.0.0.1";
  int store_port = 0;
  int rank = 0;
  int world_size = 1;
  // The address this rank's Gloo transport binds to.
  std::string bind_host = "127.0.0.1";
  // The attempt's secret (RankAssignment.rendezvous_key, or the one `dfc
  // train` makes for its ranks), the same on every rank: it prefixes every
  // store key, so only ranks that hold it meet. Empty: no prefix.
  std::string rendezvous_key;
  // Every collective and the rendezvous fail after this long: a dead peer
  // ends the job with an error instead of a hang.
  std::chrono::milliseconds timeout{60000};
  // "gloo" (CPU tensors) or "nccl" (CUDA tensors; built wherever a CUDA
  // toolkit with NCCL is found). Tensors on the other device are staged
  // through a copy.
  std::string backend = "gloo";
};

// An asynchronous collective in flight.
class CollectiveWork {
 public:
  virtual ~CollectiveWork() = default;
  virtual absl::Status Wait() = 0;
};

// Work that already failed with `status` (a collective that could not start).
std::unique_ptr<CollectiveWork> FailedCollectiveWork(absl::Status status);

// The data-parallel process group of one job: Gloo on CPU, NCCL on CUDA,
// behind one interface. Not thread-safe except that work may be waited on from
// any thread; calls must be made in the same order on every rank.
class Collective {
 public:
  virtual ~Collective() = default;
  static absl::StatusOr<std::unique_ptr<Collective>> Connect(const CollectiveOptions& options);

  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Sums `t` over ranks in place, asynchronously.
  virtual std::unique_ptr<CollectiveWork> AllReduceSumAsync(torch::Tensor t) = 0;
  absl::Status AllReduceSum(torch::Tensor t) { return AllReduceSumAsync(std::move(t))->Wait(); }
  // Copies `root`'s tensors into every rank's, in place.
  virtual absl::Status Broadcast(std::vector<torch::Tensor> tensors, int root) = 0;
  virtual absl::Status Barrier() = 0;
};

}  // namespace dfc

#endif  // DFC_TRAINING_COLLECTIVE_H_
