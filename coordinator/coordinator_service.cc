#include "coordinator/coordinator_service.h"

namespace dfc {

#define DFC_CHECK_TOKEN(ctx)                                   \
  do {                                                         \
    grpc::Status auth_ = CheckToken(*(ctx), token_);           \
    if (!auth_.ok()) return auth_;                             \
  } while (0)

grpc::Status JobServiceImpl::SubmitJob(grpc::ServerContext* ctx, const v1::SubmitJobRequest* req,
                                       v1::SubmitJobResponse* resp) {
  DFC_CHECK_TOKEN(ctx);
  auto r = coordinator_->Submit(*req);
  if (!r.ok()) return ToGrpc(r.status());
  *resp = *r;
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::GetJob(grpc::ServerContext* ctx, const v1::GetJobRequest* req, v1::Job* resp) {
  DFC_CHECK_TOKEN(ctx);
  auto r = coordinator_->GetJob(req->job_id());
  if (!r.ok()) return ToGrpc(r.status());
  *resp = *r;
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ListJobs(grpc::ServerContext* ctx, const v1::ListJobsRequest* req,
                                      v1::ListJobsResponse* resp) {
  DFC_CHECK_TOKEN(ctx);
  auto r = coordinator_->ListJobs(*req);
  if (!r.ok()) return ToGrpc(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::CancelJob(grpc::ServerContext* ctx, const v1::CancelJobRequest* req,
                                       v1::CancelJobResponse* resp) {
  DFC_CHECK_TOKEN(ctx);
  auto r = coordinator_->Cancel(req->job_id());
  if (!r.ok()) return ToGrpc(r.status());
  *resp->mutable_job() = *r;
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::DeleteJob(grpc::ServerContext* ctx, const v1::DeleteJobRequest* req,
                                       v1::DeleteJobResponse* resp) {
  DFC_CHECK_TOKEN(ctx);
  auto r = coordinator_->Delete(req->job_id(), req->outputs());
  if (!r.ok()) return ToGrpc(r.status());
  resp->set_removed_outputs(*r);
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::WatchJob(grpc::ServerContext* ctx, const v1::WatchJobRequest* req,
                                      grpc::ServerWriter<v1::JobEvent>* writer) {
  DFC_CHECK_TOKEN(ctx);
  int64_t version = -1;
  while (!ctx->IsCancelled()) {
    auto job = coordinator_->WaitForChange(req->job_id(), &version, std::chrono::milliseconds(1000));
    if (!job.ok()) return ToGrpc(job.status());
    v1::JobEvent ev;
    *ev.mutable_job() = *job;
    if (!writer->Write(ev)) return grpc::Status::OK;  // the client went away
    if (Coordinator::IsTerminal(job->state())) return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled");
}

grpc::Status WorkerServiceImpl::RegisterWorker(grpc::ServerContext* ctx, const v1::RegisterWorkerRequest* req,
                                               v1::RegisterWorkerResponse* resp) {
  DFC_CHECK_TOKEN(ctx);
  auto r = coordinator_->RegisterWorker(*req);
  if (!r.ok()) return ToGrpc(r.status());
  *resp = *r;
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::Heartbeat(grpc::ServerContext* ctx, const v1::HeartbeatRequest* req,
                                          v1::HeartbeatResponse* resp) {
  DFC_CHECK_TOKEN(ctx);
  auto r = coordinator_->Heartbeat(*req);
  if (!r.ok()) return ToGrpc(r.status());
  *resp = *r;
  return grpc::Status::OK;
}

grpc::Status WorkerServiceImpl::ReportMetrics(grpc::ServerContext* ctx, const v1::ReportMetricsRequest* req,
                                              v1::ReportMetricsResponse*) {
  DFC_CHECK_TOKEN(ctx);
  return ToGrpc(coordinator_->ReportMetrics(*req));
}

grpc::Status JobServiceImpl::ListServers(grpc::ServerContext* ctx, const v1::ListServersRequest*,
                                         v1::ListServersResponse* resp) {
  DFC_CHECK_TOKEN(ctx);
  for (std::string& a : coordinator_->ListServers()) resp->add_addresses(std::move(a));
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::ListWorkers(grpc::ServerContext* ctx, const v1::ListWorkersRequest*,
                                         v1::ListWorkersResponse* resp) {
  DFC_CHECK_TOKEN(ctx);
  *resp = coordinator_->ListWorkers();
  return grpc::Status::OK;
}

grpc::Status JobServiceImpl::GetRankLog(grpc::ServerContext* ctx, const v1::GetRankLogRequest* req,
                                        v1::GetRankLogResponse* resp) {
  DFC_CHECK_TOKEN(ctx);
  auto r = coordinator_->GetRankLog(*req);
  if (!r.ok()) return ToGrpc(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status CatalogServiceImpl::AnnounceServer(grpc::ServerContext* ctx, const v1::AnnounceServerRequest* req,
                                                v1::AnnounceServerResponse*) {
  DFC_CHECK_TOKEN(ctx);
  return ToGrpc(coordinator_->AnnounceServer(req->address()));
}

grpc::Status CatalogServiceImpl::GetModel(grpc::ServerContext* ctx, const v1::GetModelRequest* req,
                                          v1::CatalogEntry* resp) {
  DFC_CHECK_TOKEN(ctx);
  auto r = coordinator_->GetModel(req->name());
  if (!r.ok()) return ToGrpc(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status CatalogServiceImpl::RegisterModel(grpc::ServerContext* ctx, const v1::RegisterModelRequest* req,
                                               v1::RegisterModelResponse* resp) {
  DFC_CHECK_TOKEN(ctx);
  auto r = coordinator_->RegisterModel(*req);
  if (!r.ok()) return ToGrpc(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status CatalogServiceImpl::ListCatalog(grpc::ServerContext* ctx, const v1::ListCatalogRequest*,
                                             v1::ListCatalogResponse* resp) {
  DFC_CHECK_TOKEN(ctx);
  auto r = coordinator_->ListModels();
  if (!r.ok()) return ToGrpc(r.status());
  for (v1::CatalogEntry& e : *r) *resp->add_entries() = std::move(e);
  return grpc::Status::OK;
}

grpc::Status CatalogServiceImpl::GetJobOutput(grpc::ServerContext* ctx, const v1::GetJobOutputRequest* req,
                                              v1::JobOutput* resp) {
  DFC_CHECK_TOKEN(ctx);
  auto r = coordinator_->GetJobOutput(req->job_id());
  if (!r.ok()) return ToGrpc(r.status());
  *resp = std::move(*r);
  return grpc::Status::OK;
}

}  // namespace dfc
