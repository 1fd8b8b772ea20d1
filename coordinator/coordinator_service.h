#ifndef DFC_COORDINATOR_COORDINATOR_SERVICE_H_
#define DFC_COORDINATOR_COORDINATOR_SERVICE_H_

#include <string>

#include "common/rpc/rpc_util.h"
#include "coordinator/coordinator.h"
#include "dfc/v1/dfc.grpc.pb.h"

namespace dfc {

// The user-facing gRPC edge: checks the token, calls one Coordinator
// function, converts its status. Thread-safe as the Coordinator is.
class JobServiceImpl final : public v1::JobService::Service {
 public:
  JobServiceImpl(Coordinator* coordinator, BearerToken token)
      : coordinator_(coordinator), token_(std::move(token)) {}
  grpc::Status SubmitJob(grpc::ServerContext* ctx, const v1::SubmitJobRequest* req, v1::SubmitJobResponse* resp) override;
  grpc::Status GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::Job* resp) override;
  grpc::Status ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req, v1::ListJobsResponse* resp) override;
  grpc::Status CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req, v1::CancelJobResponse* resp) override;
  grpc::Status DeleteJob(grpc::ServerContext* ctx, const v1::DeleteJobRequest* req, v1::DeleteJobResponse* resp) override;
  grpc::Status WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                        grpc::ServerWriter<v1::JobEvent>* writer) override;
  grpc::Status ListServers(grpc::ServerContext* ctx, const v1::ListServersRequest* req,
                           v1::ListServersResponse* resp) override;
  grpc::Status ListWorkers(grpc::ServerContext* ctx, const v1::ListWorkersRequest* req,
                           v1::ListWorkersResponse* resp) override;
  grpc::Status GetRankLog(grpc::ServerContext* ctx, const v1::GetRankLogRequest* req,
                          v1::GetRankLogResponse* resp) override;

 private:
  Coordinator* const coordinator_;
  const BearerToken token_;
};

// The worker-facing gRPC edge.
class WorkerServiceImpl final : public v1::WorkerService::Service {
 public:
  WorkerServiceImpl(Coordinator* coordinator, BearerToken token)
      : coordinator_(coordinator), token_(std::move(token)) {}
  grpc::Status RegisterWorker(grpc::ServerContext* ctx, const v1::RegisterWorkerRequest* req,
                              v1::RegisterWorkerResponse* resp) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req, v1::HeartbeatResponse* resp) override;
  grpc::Status ReportMetrics(grpc::ServerContext* ctx, const v1::ReportMetricsRequest* req,
                             v1::ReportMetricsResponse* resp) override;

 private:
  Coordinator* const coordinator_;
  const BearerToken token_;
};

// The model catalogue for dfc-server replicas (the workers' token: the
// serving tier is trusted like the workers; users never see weights paths).
class CatalogServiceImpl final : public v1::CatalogService::Service {
 public:
  CatalogServiceImpl(Coordinator* coordinator, BearerToken token)
      : coordinator_(coordinator), token_(std::move(token)) {}
  grpc::Status AnnounceServer(grpc::ServerContext* ctx, const v1::AnnounceServerRequest* req,
                              v1::AnnounceServerResponse* resp) override;
  grpc::Status GetModel(grpc::ServerContext* ctx, const v1::GetModelRequest* req, v1::CatalogEntry* resp) override;
  grpc::Status RegisterModel(grpc::ServerContext* ctx, const v1::RegisterModelRequest* req,
                             v1::RegisterModelResponse* resp) override;
  grpc::Status ListCatalog(grpc::ServerContext* ctx, const v1::ListCatalogRequest* req,
                           v1::ListCatalogResponse* resp) override;
  grpc::Status GetJobOutput(grpc::ServerContext* ctx, const v1::GetJobOutputRequest* req,
                            v1::JobOutput* resp) override;

 private:
  Coordinator* const coordinator_;
  const BearerToken token_;
};

}  // namespace dfc

#endif  // DFC_COORDINATOR_COORDINATOR_SERVICE_H_
