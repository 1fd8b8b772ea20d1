#ifndef DFC_WORKER_WORKER_METRICS_H_
#define DFC_WORKER_WORKER_METRICS_H_

#include <memory>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace dfc {

// dfc-worker's Prometheus metrics: its slots, its ranks (running, started,
// exited by how) and its heartbeats to the coordinator (result, latency).
// Updated by the agent's thread, read by scrapes (prometheus-cpp is
// thread-safe).
class WorkerMetrics {
 public:
  WorkerMetrics(int cpu_slots, int gpus);
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void RankStarted() { started_.Increment(); }
  // result: succeeded | failed | killed | hung
  void RankExited(const std::string& result) { exited_.Add({{"result", result}}).Increment(); }
  void SetRanksRunning(int n) { running_.Set(n); }
  void Heartbeat(bool ok, double seconds);

 private:
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Counter& started_;
  prometheus::Family<prometheus::Counter>& exited_;
  prometheus::Gauge& running_;
  prometheus::Family<prometheus::Counter>& heartbeats_;
  prometheus::Histogram& heartbeat_seconds_;
  prometheus::Gauge& connected_;
};

}  // namespace dfc

#endif  // DFC_WORKER_WORKER_METRICS_H_
