#include "worker/worker_metrics.h"

namespace dfc {

WorkerMetrics::WorkerMetrics(int cpu_slots, int gpus)
    : started_(prometheus::BuildCounter()
                   .Name("dfc_worker_ranks_started_total")
                   .Help("Rank processes this worker started")
                   .Register(*registry_)
                   .Add({})),
      exited_(prometheus::BuildCounter()
                  .Name("dfc_worker_ranks_exited_total")
                  .Help("Rank processes that ended, by how (succeeded, failed, killed, hung)")
                  .Register(*registry_)),
      running_(prometheus::BuildGauge()
                   .Name("dfc_worker_ranks_running")
                   .Help("Rank processes running now")
                   .Register(*registry_)
                   .Add({})),
      heartbeats_(prometheus::BuildCounter()
                      .Name("dfc_worker_heartbeats_total")
                      .Help("Heartbeats sent to the coordinator, by result (ok, error)")
                      .Register(*registry_)),
      heartbeat_seconds_(prometheus::BuildHistogram()
                             .Name("dfc_worker_heartbeat_seconds")
                             .Help("Round trip of a heartbeat to the coordinator")
                             .Register(*registry_)
                             .Add({}, prometheus::Histogram::BucketBoundaries{0.001, 0.0025, 0.005, 0.01, 0.025,
                                                                              0.05, 0.1, 0.25, 0.5, 1, 2.5, 5})),
      connected_(prometheus::BuildGauge()
                     .Name("dfc_worker_coordinator_reachable")
                     .Help("1 when the last heartbeat reached the coordinator")
                     .Register(*registry_)
                     .Add({})) {
  auto& slots = prometheus::BuildGauge()
                    .Name("dfc_worker_slots")
                    .Help("Ranks this worker can run, by device (its GPUs, else its CPU slots)")
                    .Register(*registry_);
  slots.Add({{"device", "cpu"}}).Set(gpus > 0 ? 0 : cpu_slots);
  slots.Add({{"device", "gpu"}}).Set(gpus);
  heartbeats_.Add({{"result", "ok"}});
  heartbeats_.Add({{"result", "error"}});
}

void WorkerMetrics::Heartbeat(bool ok, double seconds) {
  heartbeats_.Add({{"result", ok ? "ok" : "error"}}).Increment();
  if (ok) heartbeat_seconds_.Observe(seconds);
  connected_.Set(ok ? 1 : 0);
}

}  // namespace dfc
