#ifndef DFC_SERVING_EVALUATION_SERVICE_H_
#define DFC_SERVING_EVALUATION_SERVICE_H_

#include <atomic>
#include <chrono>
#include <string>

#include "common/rpc/bearer_token.h"
#include "serving/batcher.h"
#include "serving/decoder_pool.h"
#include "serving/serving_metrics.h"
#include "serving/model_registry.h"
#include "dfc/v1/dfc.grpc.pb.h"

namespace dfc {

struct EvaluationOptions {
  // Items of one stream read but not yet answered; at the limit the stream
  // stops reading and gRPC flow control holds the client back.
  int max_in_flight_per_stream = 64;
  // Open Evaluate streams; more are refused with RESOURCE_EXHAUSTED.
  int max_streams = 128;
  // While the stream's model loads (a conversion, a cold ResNet-50, a wait
  // for a converter slot), the stream hears a ModelInfo in state
  // MODEL_LOADING this often: a sign of life for the client's stall
  // watchdog, which a frozen replica does not give.
  std::chrono::milliseconds loading_heartbeat{5000};
};

// The evaluation API: Evaluate streams (each image decoded by the decoder
// pool on the stream's behalf, run in the shared batcher, answered in
// completion order), ImportModel uploads and ListModels.
class EvaluationServiceImpl final : public v1::EvaluationService::Service {
 public:
  EvaluationServiceImpl(ModelRegistry* registry, InferenceBatcher* batcher, DecoderPool* decoders,
                        EvaluationOptions options, BearerToken token, std::string replica = "",
                        ServingMetrics* metrics = nullptr)
      : registry_(registry), batcher_(batcher), decoders_(decoders), options_(options), token_(std::move(token)),
        replica_(std::move(replica)), metrics_(metrics) {}

  grpc::Status Evaluate(grpc::ServerContext* ctx,
                        grpc::ServerReaderWriter<v1::EvaluateResponse, v1::EvaluateRequest>* stream) override;
  grpc::Status ImportModel(grpc::ServerContext* ctx, grpc::ServerReader<v1::ImportModelRequest>* reader,
                           v1::ModelInfo* resp) override;
  grpc::Status ListModels(grpc::ServerContext* ctx, const v1::ListModelsRequest* req,
                          v1::ListModelsResponse* resp) override;

  int open_streams() const { return open_streams_.load(); }
  int64_t streams_served() const { return streams_served_.load(); }
  int64_t images_served() const { return images_served_.load(); }

 private:
  // One stream after its model resolved (req: its first message).
  grpc::Status Serve(grpc::ServerContext* ctx,
                     grpc::ServerReaderWriter<v1::EvaluateResponse, v1::EvaluateRequest>* stream,
                     v1::EvaluateRequest req, const std::shared_ptr<ServedModel>& model, const std::string& model_name,
                     const v1::ModelInfo& info);
  ModelRegistry* const registry_;
  InferenceBatcher* const batcher_;
  DecoderPool* const decoders_;
  const EvaluationOptions options_;
  const BearerToken token_;
  const std::string replica_;
  ServingMetrics* const metrics_;
  std::atomic<int> open_streams_{0};
  std::atomic<int64_t> streams_served_{0};  // streams that named a model that loaded
  std::atomic<int64_t> images_served_{0};   // results sent
};

}  // namespace dfc

#endif  // DFC_SERVING_EVALUATION_SERVICE_H_
