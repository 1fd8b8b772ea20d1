#ifndef DFC_SERVING_MODEL_CATALOG_H_
#define DFC_SERVING_MODEL_CATALOG_H_

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "common/rpc/rpc_util.h"
#include "dfc/v1/dfc.pb.h"

namespace dfc {

// What the serving tier needs from the coordinator: model names resolved to
// weights on the shared volume, jobs to their run directory, and the one
// place an imported model is recorded. Torch-free.
class ModelCatalog {
 public:
  virtual ~ModelCatalog() = default;
  // Tells the coordinator where clients reach this replica (also: can we reach it?).
  virtual absl::Status AnnounceServer(const std::string& address) = 0;
  virtual absl::StatusOr<v1::CatalogEntry> GetModel(const std::string& name) = 0;
  virtual absl::StatusOr<v1::RegisterModelResponse> RegisterModel(const v1::RegisterModelRequest& request) = 0;
  virtual absl::StatusOr<std::vector<v1::CatalogEntry>> ListModels() = 0;
  virtual absl::StatusOr<v1::JobOutput> GetJobOutput(const std::string& job_id) = 0;
};

// The coordinator's CatalogService over gRPC (`security.token`: the workers' token).
std::unique_ptr<ModelCatalog> NewGrpcModelCatalog(std::shared_ptr<grpc::Channel> channel, RpcSecurity security);

}  // namespace dfc

#endif  // DFC_SERVING_MODEL_CATALOG_H_
