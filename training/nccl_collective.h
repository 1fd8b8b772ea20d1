#ifndef DFC_TRAINING_NCCL_COLLECTIVE_H_
#define DFC_TRAINING_NCCL_COLLECTIVE_H_

// The NCCL backend of Collective (built when a CUDA toolkit with NCCL is
// found: DFC_WITH_NCCL). Internal to training/collective.cc and its tests.

#include <memory>
#include <string>

#include <torch/csrc/distributed/c10d/Store.hpp>

#include "absl/status/statusor.h"
#include "training/collective.h"

namespace dfc {

// Joins the NCCL communicator of `options` on CUDA device 0 (each rank sees
// one GPU through CUDA_VISIBLE_DEVICES); rank 0 publishes the NCCL unique id
// in `store`. FAILED_PRECONDITION when this process sees no CUDA device.
// CUDA tensors are reduced in place (ordered after the default stream); CPU
// tensors are staged through device memory.
absl::StatusOr<std::unique_ptr<Collective>> ConnectNccl(c10::intrusive_ptr<c10d::Store> store,
                                                        const CollectiveOptions& options);

// "2.28.3": the NCCL library linked in (no GPU needed).
std::string NcclVersion();
// CUDA devices this process sees, or the CUDA runtime's reason for none.
absl::StatusOr<int> CudaDeviceCount();

}  // namespace dfc

#endif  // DFC_TRAINING_NCCL_COLLECTIVE_H_
