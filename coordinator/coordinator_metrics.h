#ifndef DFC_COORDINATOR_COORDINATOR_METRICS_H_
#define DFC_COORDINATOR_COORDINATOR_METRICS_H_

#include <atomic>
#include <memory>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "coordinator/coordinator.h"
#include "coordinator/state_backups.h"

namespace dfc {

// The coordinator's Prometheus metrics. Events (submissions, first starts,
// restarts, finished jobs) update counters and a histogram through
// CoordinatorOptions::on_job_change; the cluster's state (jobs by state,
// queue, workers, slots, running jobs' last epoch) is read from the
// coordinator at each scrape.
class CoordinatorMetrics : public prometheus::Collectable {
 public:
  CoordinatorMetrics();
  // Wire before Coordinator::Create.
  void Hook(CoordinatorOptions* options);
  // Then tell it the coordinator (scrapes before this see no cluster state).
  void Attach(Coordinator* coordinator) { coordinator_ = coordinator; }
  // And the scheduled backups, when --backup-dir is set (they outlive it).
  void Attach(const StateBackups* backups) { backups_ = backups; }
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  void OnJobChange(const v1::Job* before, const v1::Job& after);
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Counter& submitted_;
  prometheus::Counter& restarts_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Histogram& start_delay_;
  std::atomic<Coordinator*> coordinator_{nullptr};
  std::atomic<const StateBackups*> backups_{nullptr};
};

}  // namespace dfc

#endif  // DFC_COORDINATOR_COORDINATOR_METRICS_H_
