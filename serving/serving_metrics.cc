#include "serving/serving_metrics.h"

#include "common/http/metrics_endpoint.h"

namespace dfc {

namespace {
const prometheus::Histogram::BucketBoundaries kSeconds{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                       0.1,    0.25,  0.5,    1,     2.5,  5,     10};
}  // namespace

ServingMetrics::ServingMetrics()
    : requests_(prometheus::BuildCounter()
                    .Name("dfc_eval_requests_total")
                    .Help("Evaluate streams, by model and result (error: the stream ended with an error status)")
                    .Register(*registry_)),
      images_(prometheus::BuildCounter()
                  .Name("dfc_eval_images_total")
                  .Help("Images answered, by model and result (error: no prediction, e.g. an undecodable image)")
                  .Register(*registry_)),
      batch_size_(prometheus::BuildHistogram()
                      .Name("dfc_eval_batch_size")
                      .Help("Images per forward pass of the dynamic batcher")
                      .Register(*registry_)
                      .Add({}, prometheus::Histogram::BucketBoundaries{1, 2, 4, 8, 16, 32, 64, 128, 256})),
      queue_wait_(prometheus::BuildHistogram()
                      .Name("dfc_eval_queue_wait_seconds")
                      .Help("Time a decoded image waited in the batcher's queue before its forward pass")
                      .Register(*registry_)
                      .Add({}, kSeconds)),
      latency_(prometheus::BuildHistogram()
                   .Name("dfc_eval_latency_seconds")
                   .Help("Time from an image's arrival on its stream to its answer being written")
                   .Register(*registry_)
                   .Add({}, kSeconds)) {}

void ServingMetrics::Image(const std::string& model, bool ok, double latency_seconds) {
  images_.Add({{"model", model}, {"result", ok ? "ok" : "error"}}).Increment();
  latency_.Observe(latency_seconds);
}

std::vector<prometheus::MetricFamily> ServingMetrics::Collect() const {
  std::vector<prometheus::MetricFamily> out = registry_->Collect();
  auto streams = GaugeFamily("dfc_eval_streams_open", "Evaluate streams open now");
  AddGauge(streams, open_streams_ ? open_streams_() : 0);
  out.push_back(std::move(streams));
  auto loaded = GaugeFamily("dfc_models_loaded", "Models loaded in this replica's memory");
  AddGauge(loaded, loaded_models_ ? loaded_models_() : 0);
  out.push_back(std::move(loaded));
  prometheus::MetricFamily replaced;
  replaced.name = "dfc_eval_decoders_replaced_total";
  replaced.help = "Image decoder processes that crashed, hung or died and were replaced (see the server's log)";
  replaced.type = prometheus::MetricType::Counter;
  prometheus::ClientMetric m;
  m.counter.value = decoders_replaced_ ? static_cast<double>(decoders_replaced_()) : 0;
  replaced.metric.push_back(std::move(m));
  out.push_back(std::move(replaced));
  return out;
}

}  // namespace dfc
