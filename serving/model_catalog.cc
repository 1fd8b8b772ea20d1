#include "serving/model_catalog.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "dfc/v1/dfc.grpc.pb.h"

namespace dfc {
namespace {

// A failed call names the coordinator, so that "UNAVAILABLE" reads as what it is.
absl::Status CatalogError(const grpc::Status& st) {
  absl::Status s = FromGrpc(st);
  if (s.code() == absl::StatusCode::kUnavailable || s.code() == absl::StatusCode::kDeadlineExceeded) {
    return absl::Status(s.code(), absl::StrCat("the model catalogue (coordinator) is unreachable: ", s.message()));
  }
  return s;
}

class GrpcModelCatalog final : public ModelCatalog {
 public:
  GrpcModelCatalog(std::shared_ptr<grpc::Channel> channel, RpcSecurity security)
      : stub_(v1::CatalogService::NewStub(channel)), security_(std::move(security)) {}

  absl::Status AnnounceServer(const std::string& address) override {
    v1::AnnounceServerRequest req;
    req.set_address(address);
    v1::AnnounceServerResponse resp;
    return Call(&v1::CatalogService::Stub::AnnounceServer, req, &resp, std::chrono::seconds(3));
  }
  absl::StatusOr<v1::CatalogEntry> GetModel(const std::string& name) override {
    v1::GetModelRequest req;
    req.set_name(name);
    v1::CatalogEntry resp;
    DFC_RETURN_IF_ERROR(Call(&v1::CatalogService::Stub::GetModel, req, &resp));
    return resp;
  }
  absl::StatusOr<v1::RegisterModelResponse> RegisterModel(const v1::RegisterModelRequest& req) override {
    v1::RegisterModelResponse resp;
    DFC_RETURN_IF_ERROR(Call(&v1::CatalogService::Stub::RegisterModel, req, &resp));
    return resp;
  }
  absl::StatusOr<std::vector<v1::CatalogEntry>> ListModels() override {
    v1::ListCatalogResponse resp;
    DFC_RETURN_IF_ERROR(Call(&v1::CatalogService::Stub::ListCatalog, v1::ListCatalogRequest(), &resp));
    return std::vector<v1::CatalogEntry>(resp.entries().begin(), resp.entries().end());
  }
  absl::StatusOr<v1::JobOutput> GetJobOutput(const std::string& job_id) override {
    v1::GetJobOutputRequest req;
    req.set_job_id(job_id);
    v1::JobOutput resp;
    DFC_RETURN_IF_ERROR(Call(&v1::CatalogService::Stub::GetJobOutput, req, &resp));
    return resp;
  }

 private:
  // One unary call with the deadline and token; errors name the catalogue.
  template <typename Request, typename Response>
  absl::Status Call(grpc::Status (v1::CatalogService::Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                    const Request& req, Response* resp, std::chrono::milliseconds deadline = kRpcDeadline) {
    auto ctx = MakeContext(security_, deadline);
    grpc::Status st = (stub_.get()->*method)(ctx.get(), req, resp);
    return st.ok() ? absl::OkStatus() : CatalogError(st);
  }

  std::unique_ptr<v1::CatalogService::Stub> stub_;
  const RpcSecurity security_;
};

}  // namespace

std::unique_ptr<ModelCatalog> NewGrpcModelCatalog(std::shared_ptr<grpc::Channel> channel, RpcSecurity security) {
  return std::make_unique<GrpcModelCatalog>(std::move(channel), std::move(security));
}

}  // namespace dfc
