#include "serving/evaluation_service.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <future>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/rpc/rpc_util.h"
#include "common/sha256.h"
#include "common/utf8.h"

namespace dfc {
namespace {

constexpr size_t kMaxIdBytes = 4096;

// Decrements a counter when the scope ends.
struct CountGuard {
  std::atomic<int>* n;
  ~CountGuard() { --*n; }
};

void PushError(ResultQueue& results, std::string id, std::optional<int32_t> label, std::string error) {
  EvalOutcome out;
  out.received = std::chrono::steady_clock::now();
  out.id = std::move(id);
  out.label = label;
  out.error = std::move(error);
  results.Push(std::move(out));
}

}  // namespace

grpc::Status EvaluationServiceImpl::Evaluate(
    grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::EvaluateResponse, v1::EvaluateRequest>* stream) {
  if (grpc::Status auth = CheckToken(*ctx, token_); !auth.ok()) return auth;
  if (++open_streams_ > options_.max_streams) {
    --open_streams_;
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        absl::StrCat("too many open evaluation streams (limit ", options_.max_streams, ")"));
  }
  CountGuard guard{&open_streams_};
  v1::EvaluateRequest req;
  if (!stream->Read(&req)) return grpc::Status::OK;  // an empty stream
  if (!req.has_model()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "model: the first message must name the model (a job checkpoint or an imported name)");
  }
  // The load runs beside the stream's thread, which tells the client every
  // loading_heartbeat that it is still loading.
  auto loading = std::async(std::launch::async, [this, &req] { return registry_->Resolve(req.model()); });
  bool client_gone = false;
  while (loading.wait_for(options_.loading_heartbeat) != std::future_status::ready) {
    if (client_gone) continue;
    v1::EvaluateResponse beat;
    beat.mutable_model()->set_state(v1::MODEL_LOADING);
    client_gone = !stream->Write(beat);
  }
  auto resolved = loading.get();
  if (client_gone) return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
  if (!resolved.ok()) {
    if (metrics_ != nullptr) metrics_->Request("unresolved", false);  // never a client-chosen name as a label
    return ToGrpc(resolved.status());
  }
  const std::shared_ptr<ServedModel> model = resolved->first;
  const std::string model_name = resolved->second.name();
  ++streams_served_;
  grpc::Status status = Serve(ctx, stream, req, model, model_name, resolved->second);
  if (metrics_ != nullptr) metrics_->Request(model_name, status.ok());
  return status;
}

grpc::Status EvaluationServiceImpl::Serve(grpc::ServerContext* ctx,
                                          grpc::ServerReaderWriter<v1::EvaluateResponse, v1::EvaluateRequest>* stream,
                                          v1::EvaluateRequest req,
                                          const std::shared_ptr<ServedModel>& model, const std::string& model_name,
                                          const v1::ModelInfo& info) {
  {
    v1::EvaluateResponse head;
    *head.mutable_model() = info;
    if (!stream->Write(head)) return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
  }

  auto results = std::make_shared<ResultQueue>(options_.max_in_flight_per_stream);
  std::thread writer([&] {
    EvalOutcome o;
    v1::EvaluateResponse resp;
    while (results->Pop(&o)) {
      v1::EvaluateResult* r = resp.mutable_result();
      r->Clear();
      r->set_id(std::move(o.id));
      if (o.label) r->set_label(*o.label);
      if (o.error.empty()) {
        r->set_p_real(o.p_real);
        r->set_logit(o.logit);
      } else {
        r->set_error(ValidUtf8(o.error));  // it may quote a weights file's layer names
      }
      const bool ok = r->error().empty();
      if (!stream->Write(resp)) {
        results->Cancel();
        break;
      }
      ++images_served_;
      if (metrics_ != nullptr) {
        metrics_->Image(model_name, ok,
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - o.received).count());
      }
      results->Release();
    }
  });

  const size_t image_bytes = static_cast<size_t>(model->input_size) * model->input_size * 3;
  int64_t index = 0;
  bool first = true;
  do {
    const bool is_first = first;
    first = false;
    // The first message may carry the model alone.
    if (is_first && req.image().empty() && req.id().empty() && !req.has_label()) continue;
    const auto received = std::chrono::steady_clock::now();
    if (!results->Acquire()) break;  // blocks while this stream has too much in flight
    std::string id = req.id().empty() ? absl::StrCat(index) : req.id();
    ++index;
    if (!is_first && req.has_model()) {
      PushError(*results, std::move(id), std::nullopt, "model: only the first message may name the model");
      continue;
    }
    std::optional<int32_t> label;
    if (req.has_label()) label = req.label();
    if (id.size() > kMaxIdBytes) {
      PushError(*results, id.substr(0, 64) + "...", label, absl::StrCat("id: longer than ", kMaxIdBytes, " bytes"));
      continue;
    }
    if (label && *label != 0 && *label != 1) {
      PushError(*results, std::move(id), label, absl::StrCat("label ", *label, ": expected 0 (fake) or 1 (real)"));
      continue;
    }
    std::vector<uint8_t> pixels(image_bytes);
    absl::Status decoded = decoders_->DecodeResizeInto(req.image(), model->input_size, pixels.data());
    if (!decoded.ok()) {
      PushError(*results, std::move(id), label, absl::StrCat("image: ", decoded.message()));
      continue;
    }
    if (!batcher_->Enqueue(model, id, label, std::move(pixels), results, received)) {
      if (results->cancelled()) break;
      PushError(*results, std::move(id), label, "the server is shutting down");
    }
  } while (!ctx->IsCancelled() && stream->Read(&req));

  if (ctx->IsCancelled()) results->Cancel();  // queued items of this stream are dropped
  results->CloseInput();
  writer.join();
  if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "evaluation cancelled");
  return grpc::Status::OK;
}

grpc::Status EvaluationServiceImpl::ImportModel(grpc::ServerContext* ctx,
                                                grpc::ServerReader<v1::ImportModelRequest>* reader,
                                                v1::ModelInfo* resp) {
  if (grpc::Status auth = CheckToken(*ctx, token_); !auth.ok()) return auth;
  v1::ImportModelRequest req;
  if (!reader->Read(&req) || !req.has_header()) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "header: the first message must be the import header");
  }
  const v1::ImportModelRequest::Header header = req.header();
  if (absl::Status st = registry_->CheckImport(header); !st.ok()) return ToGrpc(st);
  const std::string path = registry_->NewUploadPath();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return grpc::Status(grpc::StatusCode::INTERNAL, "cannot write the upload into the model store");
  int64_t received = 0;
  Sha256 digest;
  absl::Status st;
  while (st.ok() && reader->Read(&req)) {
    if (req.part_case() != v1::ImportModelRequest::kChunk) {
      st = absl::InvalidArgumentError("header: only the first message may be a header");
      break;
    }
    received += static_cast<int64_t>(req.chunk().size());
    if (received > header.size_bytes()) {
      st = absl::InvalidArgumentError(absl::StrCat("more bytes than the header's size_bytes ", header.size_bytes()));
    } else if (std::fwrite(req.chunk().data(), 1, req.chunk().size(), f) != req.chunk().size()) {
      st = absl::InternalError("cannot write the upload into the model store");
    }
    digest.Update(req.chunk());
  }
  if (st.ok() && ctx->IsCancelled()) st = absl::CancelledError("import cancelled");
  if (st.ok() && received != header.size_bytes()) {
    st = absl::InvalidArgumentError(absl::StrCat("received ", received, " of ", header.size_bytes(), " bytes"));
  }
  if (std::fflush(f) != 0 || ::fsync(::fileno(f)) != 0) {
    if (st.ok()) st = absl::InternalError("cannot write the upload into the model store");
  }
  std::fclose(f);
  const std::string sha256 = digest.HexDigest();
  if (st.ok() && !header.sha256().empty() && header.sha256() != sha256) {
    st = absl::DataLossError(absl::StrCat("the upload's SHA-256 is ", sha256, ", the header announced ",
                                          header.sha256(), ": the file changed or was damaged on the way"));
  }
  if (!st.ok()) {
    std::error_code ec;
    std::filesystem::remove(path, ec);
    return ToGrpc(st);
  }
  auto info = registry_->Import(header, path, sha256);
  if (!info.ok()) return ToGrpc(info.status());
  *resp = *info;
  return grpc::Status::OK;
}

grpc::Status EvaluationServiceImpl::ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest*,
                                               v1::ListModelsResponse* resp) {
  if (grpc::Status auth = CheckToken(*ctx, token_); !auth.ok()) return auth;
  auto models = registry_->List();
  if (!models.ok()) return ToGrpc(models.status());
  for (auto& m : *models) *resp->add_models() = std::move(m);
  resp->set_replica(replica_);
  resp->set_streams_served(streams_served_.load());
  resp->set_images_served(images_served_.load());
  return grpc::Status::OK;
}

}  // namespace dfc
