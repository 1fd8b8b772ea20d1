#include "serving/model_catalog.h"

#include "absl/strings/str_cat.h"
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
    auto ctx = MakeContext(security_, std::chrono::seconds(3));
    if (grpc::Status st = stub_->AnnounceServer(ctx.get(), req, &resp); !st.ok()) return CatalogError(st);
    return absl::OkStatus();
  }
  absl::StatusOr<v1::CatalogEntry> GetModel(const std::string& name) override {
    v1::GetModelRequest req;
    req.set_name(name);
    v1::CatalogEntry resp;
    auto ctx = MakeContext(security_);
    if (grpc::Status st = stub_->GetModel(ctx.get(), req, &resp); !st.ok()) return CatalogError(st);
    return resp;
  }
  absl::StatusOr<v1::RegisterModelResponse> RegisterModel(const v1::RegisterModelRequest& req) override {
    v1::RegisterModelResponse resp;
    auto ctx = MakeContext(security_);
    if (grpc::Status st = stub_->RegisterModel(ctx.get(), req, &resp); !st.ok()) return CatalogError(st);
    return resp;
  }
  absl::StatusOr<std::vector<v1::CatalogEntry>> ListModels() override {
    v1::ListCatalogResponse resp;
    auto ctx = MakeContext(security_);
    if (grpc::Status st = stub_->ListCatalog(ctx.get(), v1::ListCatalogRequest(), &resp); !st.ok()) {
      return CatalogError(st);
    }
    return std::vector<v1::CatalogEntry>(resp.entries().begin(), resp.entries().end());
  }
  absl::StatusOr<v1::JobOutput> GetJobOutput(const std::string& job_id) override {
    v1::GetJobOutputRequest req;
    req.set_job_id(job_id);
    v1::JobOutput resp;
    auto ctx = MakeContext(security_);
    if (grpc::Status st = stub_->GetJobOutput(ctx.get(), req, &resp); !st.ok()) return CatalogError(st);
    return resp;
  }

 private:
  std::unique_ptr<v1::CatalogService::Stub> stub_;
  const RpcSecurity security_;
};

}  // namespace

std::unique_ptr<ModelCatalog> NewGrpcModelCatalog(std::shared_ptr<grpc::Channel> channel, RpcSecurity security) {
  return std::make_unique<GrpcModelCatalog>(std::move(channel), std::move(security));
}

}  // namespace dfc
