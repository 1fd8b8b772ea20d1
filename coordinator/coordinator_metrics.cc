#include "coordinator/coordinator_metrics.h"

#include "common/http/metrics_endpoint.h"
#include "common/training_config.h"

namespace dfc {

namespace {
std::string StateLabel(v1::JobState s) {
  std::string name = v1::JobState_Name(s);
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}
}  // namespace

CoordinatorMetrics::CoordinatorMetrics()
    : submitted_(prometheus::BuildCounter()
                     .Name("dfc_jobs_submitted_total")
                     .Help("Jobs accepted by SubmitJob")
                     .Register(*registry_)
                     .Add({})),
      restarts_(prometheus::BuildCounter()
                    .Name("dfc_job_restarts_total")
                    .Help("Failed attempts that went back to the queue to resume from a checkpoint")
                    .Register(*registry_)
                    .Add({})),
      finished_(prometheus::BuildCounter()
                    .Name("dfc_jobs_finished_total")
                    .Help("Jobs that reached a final state, by that state")
                    .Register(*registry_)),
      start_delay_(prometheus::BuildHistogram()
                       .Name("dfc_job_start_delay_seconds")
                       .Help("Time from a job's submission to all of its ranks running (first start)")
                       .Register(*registry_)
                       .Add({}, prometheus::Histogram::BucketBoundaries{0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600,
                                                                        4 * 3600, 24 * 3600})) {}

void CoordinatorMetrics::Hook(CoordinatorOptions* options) {
  options->on_job_change = [this](const v1::Job* before, const v1::Job& after) { OnJobChange(before, after); };
}

void CoordinatorMetrics::OnJobChange(const v1::Job* before, const v1::Job& after) {
  if (before == nullptr) {
    // New to this coordinator: a submission (a job reloaded at start-up has run before).
    if (after.state() == v1::QUEUED && after.attempt() == 0) submitted_.Increment();
    return;
  }
  if (before->started_unix_ms() == 0 && after.started_unix_ms() != 0) {
    start_delay_.Observe(static_cast<double>(after.started_unix_ms() - after.created_unix_ms()) / 1000.0);
  }
  if (after.restarts() > before->restarts()) restarts_.Increment(after.restarts() - before->restarts());
  if (!IsTerminalState(before->state()) && IsTerminalState(after.state())) {
    finished_.Add({{"state", StateLabel(after.state())}}).Increment();
  }
}

std::vector<prometheus::MetricFamily> CoordinatorMetrics::Collect() const {
  std::vector<prometheus::MetricFamily> out = registry_->Collect();
  if (const StateBackups* b = backups_.load()) {
    auto last = GaugeFamily("dfc_state_last_backup_timestamp_seconds",
                            "When the newest scheduled copy of the state database in --backup-dir was taken (Unix "
                            "seconds; 0: none yet)");
    AddGauge(last, static_cast<double>(b->last_copy_unix()));
    out.push_back(std::move(last));
    prometheus::MetricFamily failed;
    failed.name = "dfc_state_backup_failures_total";
    failed.help = "Scheduled copies of the state database that failed (the reason is in the coordinator's log)";
    failed.type = prometheus::MetricType::Counter;
    failed.metric.emplace_back().counter.value = static_cast<double>(b->failures());
    out.push_back(std::move(failed));
  }
  Coordinator* c = coordinator_.load();
  if (c == nullptr) return out;
  const ClusterSnapshot s = c->Snapshot();
  auto jobs = GaugeFamily("dfc_jobs", "Jobs the coordinator holds, by state");
  for (int st = v1::QUEUED; st <= v1::CANCELLED; ++st) {
    auto it = s.jobs.find(static_cast<v1::JobState>(st));
    AddGauge(jobs, it == s.jobs.end() ? 0 : it->second, {{"state", StateLabel(static_cast<v1::JobState>(st))}});
  }
  out.push_back(std::move(jobs));
  auto failing = GaugeFamily("dfc_state_database_write_failing",
                             "1 while the last write of the state database failed (its disk full or read-only): "
                             "submissions are refused and jobs' changes wait");
  AddGauge(failing, c->store()->write_failing() ? 1 : 0);
  out.push_back(std::move(failing));
  auto queue = GaugeFamily("dfc_queue_length", "Jobs waiting in the queue (QUEUED)");
  AddGauge(queue, s.queued);
  out.push_back(std::move(queue));
  auto workers = GaugeFamily("dfc_workers", "Registered workers by liveness (suspect: a heartbeat is late)");
  AddGauge(workers, s.workers_live, {{"state", "live"}});
  AddGauge(workers, s.workers_suspect, {{"state", "suspect"}});
  out.push_back(std::move(workers));
  auto slots = GaugeFamily("dfc_slots", "Rank slots of registered workers (a GPU or a CPU slot each)");
  AddGauge(slots, s.cpu_slots, {{"device", "cpu"}});
  AddGauge(slots, s.gpus, {{"device", "gpu"}});
  out.push_back(std::move(slots));
  auto free = GaugeFamily("dfc_slots_free", "Rank slots no running rank holds");
  AddGauge(free, s.cpu_slots_free, {{"device", "cpu"}});
  AddGauge(free, s.gpus_free, {{"device", "gpu"}});
  out.push_back(std::move(free));
  // Per running job (a gauge each; job ids never label a histogram).
  auto epochs = GaugeFamily("dfc_job_epochs_done", "Epochs a running job has finished (of the notebook recipe: "
                                                   "its retraining's)");
  auto selection = GaugeFamily("dfc_job_selection_epochs_done",
                               "Epochs a running --recipe notebook job has finished while selecting its epoch count");
  auto ips = GaugeFamily("dfc_job_images_per_second", "A running job's training throughput in its last epoch");
  auto step = GaugeFamily("dfc_job_step_seconds",
                          "A running job's mean step time in its last epoch, split by phase "
                          "(data wait, compute, all-reduce wait)");
  for (const ClusterSnapshot::Running& r : s.running) {
    AddGauge(epochs, r.epoch, {{"job", r.job_id}});
    AddGauge(selection, r.selection_epoch, {{"job", r.job_id}});
    AddGauge(ips, r.images_per_second, {{"job", r.job_id}});
    AddGauge(step, r.data_seconds, {{"job", r.job_id}, {"phase", "data"}});
    AddGauge(step, r.compute_seconds, {{"job", r.job_id}, {"phase", "compute"}});
    AddGauge(step, r.allreduce_wait_seconds, {{"job", r.job_id}, {"phase", "allreduce_wait"}});
  }
  out.push_back(std::move(epochs));
  out.push_back(std::move(selection));
  out.push_back(std::move(ips));
  out.push_back(std::move(step));
  return out;
}

}  // namespace dfc
