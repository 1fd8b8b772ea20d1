#ifndef DFC_SERVING_SERVING_METRICS_H_
#define DFC_SERVING_SERVING_METRICS_H_

#include <functional>
#include <memory>
#include <string>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace dfc {

// dfc-server's Prometheus metrics: evaluation requests (streams) and images
// by model and result, the batcher's batch sizes and queue waits, each
// image's latency from its arrival to its answer, open streams, loaded
// models and replaced image decoders (read at each scrape). Histograms carry
// no labels.
class ServingMetrics : public prometheus::Collectable {
 public:
  ServingMetrics();
  // Gauges read at scrape time.
  void SetGauges(std::function<int()> open_streams, std::function<int()> loaded_models) {
    open_streams_ = std::move(open_streams);
    loaded_models_ = std::move(loaded_models);
  }
  // Read at scrape time: the image decoders replaced so far (DecoderPool::replaced).
  void SetDecodersReplaced(std::function<int64_t()> replaced) { decoders_replaced_ = std::move(replaced); }
  // result: ok | error (a stream that ended with an error status, or an image without a prediction)
  void Request(const std::string& model, bool ok) { requests_.Add({{"model", model}, {"result", ok ? "ok" : "error"}}).Increment(); }
  void Image(const std::string& model, bool ok, double latency_seconds);
  void Batch(int size) { batch_size_.Observe(size); }
  void QueueWait(double seconds) { queue_wait_.Observe(seconds); }
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& images_;
  prometheus::Histogram& batch_size_;
  prometheus::Histogram& queue_wait_;
  prometheus::Histogram& latency_;
  std::function<int()> open_streams_, loaded_models_;
  std::function<int64_t()> decoders_replaced_;
};

}  // namespace dfc

#endif  // DFC_SERVING_SERVING_METRICS_H_
