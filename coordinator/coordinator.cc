#include "coordinator/coordinator.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status_macros.h"
#include "common/exit_codes.h"
#include "common/random_token.h"
#include "common/atomic_file.h"
#include "common/dir_lock.h"
#include "common/run_dir.h"
#include "common/training_config.h"
#include "coordinator/state_backups.h"
#include "data_shards/shard_format.h"

namespace dfc {
namespace fs = std::filesystem;

bool Coordinator::IsTerminal(v1::JobState s) { return IsTerminalState(s); }

bool InsideRoots(const std::string& path, const std::vector<std::string>& roots) {
  if (path.empty() || path.find('\0') != std::string::npos) return false;
  std::error_code ec;
  const fs::path p = fs::weakly_canonical(fs::absolute(path, ec), ec);
  if (ec) return false;
  for (const std::string& root : roots) {
    const fs::path r(root);
    auto pi = p.begin();
    bool inside = true;
    for (auto ri = r.begin(); ri != r.end(); ++ri, ++pi) {
      if (ri->empty()) continue;  // a trailing separator
      if (pi == p.end() || *pi != *ri) {
        inside = false;
        break;
      }
    }
    if (inside) return true;
  }
  return false;
}

absl::Status ValidateSubmit(const v1::SubmitJobRequest& r, const std::vector<std::string>& roots) {
  if (absl::Status st = ValidateSubmitRequest(r); !st.ok()) return st;
  // Before anything opens them: the answer for a path outside the roots must
  // not depend on whether it exists.
  if (!InsideRoots(r.config().data(), roots)) {
    return absl::InvalidArgumentError(absl::StrCat("config.data (--data): '", r.config().data(),
                                                   "' is outside the coordinator's data roots"));
  }
  if (!r.config().init().empty() && !InsideRoots(r.config().init(), roots)) {
    return absl::InvalidArgumentError(absl::StrCat("config.init (--init): '", r.config().init(),
                                                   "' is outside the coordinator's data roots"));
  }
  auto manifest = ReadManifest(r.config().data());
  if (!manifest.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("config.data: ", manifest.status().message()));
  }
  return absl::OkStatus();
}

std::string StateDatabase(const std::string& state_dir) { return (fs::path(state_dir) / "jobs.db").string(); }

absl::StatusOr<int> LockStateDir(const std::string& state_dir) {
  return LockDirectory(state_dir, "coordinator.lock", "--state", "dfc-coordinator",
                       "two coordinators on one state directory would run every job twice");
}

absl::StatusOr<RestoredState> RestoreState(const std::string& state_dir, const std::string& from) {
  std::error_code ec;
  fs::create_directories(state_dir, ec);  // a new, empty volume is restored into too
  if (ec) return absl::InvalidArgumentError(absl::StrCat("--state: cannot create '", state_dir, "': ", ec.message()));
  DFC_ASSIGN_OR_RETURN(const int lock_fd, LockStateDir(state_dir));
  RestoredState r;
  r.database = StateDatabase(state_dir);
  r.aside = (fs::path(state_dir) / absl::StrCat("before-restore-", StateStamp(absl::ToUnixSeconds(absl::Now()))))
                .string();
  auto jobs = JobStore::Restore(from, r.database, r.aside);
  ::close(lock_fd);
  if (!jobs.ok()) return jobs.status();
  r.jobs = jobs->first;
  if (!jobs->second) r.aside.clear();
  return r;
}

Coordinator::~Coordinator() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

absl::StatusOr<std::unique_ptr<Coordinator>> Coordinator::Create(const CoordinatorOptions& in) {
  CoordinatorOptions o = in;
  // A test that fakes the wall clock alone has it measure intervals too.
  if (!o.elapsed_ms && o.now_ms) o.elapsed_ms = o.now_ms;
  if (!o.now_ms) {
    o.now_ms = [] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
          .count();
    };
  }
  if (!o.elapsed_ms) {
    o.elapsed_ms = [] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count();
    };
  }
  if (o.output_root.empty()) o.output_root = (fs::path(o.state_dir) / "jobs").string();
  std::error_code ec;
  fs::create_directories(o.state_dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("--state: cannot create '", o.state_dir, "': ", ec.message()));
  fs::create_directories(o.output_root, ec);
  o.output_root = fs::absolute(o.output_root).string();
  if (o.data_roots.empty()) o.data_roots.push_back(fs::absolute(o.state_dir).lexically_normal().parent_path().string());
  for (std::string& root : o.data_roots) {
    root = fs::weakly_canonical(fs::absolute(root), ec).string();
    if (ec || root.empty()) return absl::InvalidArgumentError(absl::StrCat("--data-root: cannot resolve '", root, "'"));
  }
  DFC_ASSIGN_OR_RETURN(int lock_fd, LockStateDir(o.state_dir));
  auto store = JobStore::Open(o.in_memory_store ? ":memory:" : StateDatabase(o.state_dir));
  if (!store.ok()) {
    ::close(lock_fd);
    return store.status();
  }
  if (absl::Status st = (*store)->MigrateLegacyModels((fs::path(o.state_dir) / "models").string()); !st.ok()) {
    ::close(lock_fd);
    return st;
  }
  std::unique_ptr<Coordinator> c(new Coordinator(std::move(o), std::move(*store)));
  c->lock_fd_ = lock_fd;
  c->started_ms_ = c->Elapsed();
  DFC_ASSIGN_OR_RETURN(std::vector<v1::Job> jobs, c->store_->List());
  // Deletions are remembered for kKeepDeletedIds (a full disk leaves them for the next start).
  (void)c->store_->ForgetDeletedBefore(c->Now() - std::chrono::duration_cast<std::chrono::milliseconds>(
                                                      kKeepDeletedIds).count());
  absl::MutexLock lock(&c->mu_);
  for (v1::Job& job : jobs) {
    // The ranks of a RUNNING job train on while the coordinator is away: it
    // waits for their workers to report them back (reattach_timeout). A
    // SCHEDULED job's ranks may not all have been sent, and those that were
    // cannot be sent the rest (the rendezvous key is not kept): it goes back
    // to the queue, its ranks are stopped as stale, and it resumes from its
    // checkpoint.
    if (job.state() == v1::RUNNING && job.workers_size() > 0) {
      ActiveJob a;
      a.scheduled_ms = c->Elapsed();
      a.attempt = job.attempt();
      a.ranks.resize(job.workers_size());
      for (RankSlot& s : a.ranks) s.sent = true;
      a.reattaching = true;
      c->active_[job.job_id()] = std::move(a);
      c->AddEvent(job, "reattaching",
                  absl::StrCat("the coordinator restarted; waiting up to ", c->options_.reattach_timeout.count() / 1000,
                               " s for the workers to report the job's ", job.workers_size(), " rank(s) back"));
      DFC_RETURN_IF_ERROR(c->Save(job));
    } else if (job.state() == v1::SCHEDULED || job.state() == v1::RUNNING) {
      job.set_state(v1::QUEUED);
      job.clear_workers();
      c->AddEvent(job, "requeued", "the coordinator restarted before all of the job's ranks had started; they are stopped");
      DFC_RETURN_IF_ERROR(c->Save(job));
    }
    DFC_RETURN_IF_ERROR(c->ReconcileEpochsLocked(job));
    c->jobs_[job.job_id()] = job;
  }
  return c;
}

namespace {
// Whether `epoch` is one the job can have (1..config.epochs): what ranks
// report or write is not trusted beyond it.
bool IsJobEpoch(const v1::Job& job, int64_t epoch) { return epoch >= 1 && epoch <= job.config().epochs(); }

// The job's record of one phase's epochs: "" the run's, run_dir::kSelection
// the notebook recipe's epoch-count selection (JobStore::PutEpoch refuses any
// other phase).
google::protobuf::RepeatedPtrField<v1::EpochMetrics>* PhaseEpochs(v1::Job& job, const std::string& phase) {
  return phase.empty() ? job.mutable_epochs() : job.mutable_selection_epochs();
}
}  // namespace

absl::Status Coordinator::ReconcileEpochsLocked(v1::Job& job) {
  DFC_RETURN_IF_ERROR(ReconcilePhaseLocked(job, ""));
  return ReconcilePhaseLocked(job, run_dir::kSelection);
}

absl::Status Coordinator::ReconcilePhaseLocked(v1::Job& job, const std::string& phase) {
  auto f = OpenToRead(run_dir::Metrics(phase.empty() ? job.output_dir() : run_dir::SelectionDir(job.output_dir())));
  if (!f.ok()) return absl::OkStatus();  // none yet (or not a file: a FIFO would hold this lock for ever)
  auto* list = PhaseEpochs(job, phase);
  std::map<int, v1::EpochMetrics> have;
  for (const v1::EpochMetrics& e : *list) have[e.epoch()] = e;
  bool added = false;
  // The ranks wrote this file (and they read users' files): a line longer
  // than any real one, or an epoch beyond the job's limit, is skipped, so
  // the file cannot make this lock hold gigabytes or the record grow
  // without bound.
  constexpr size_t kMaxLine = 64 << 10;
  std::string line;
  bool too_long = false;
  while (ReadBoundedLine(f->get(), kMaxLine, &line, &too_long)) {
    if (too_long) continue;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const int epoch = run_dir::MetricsLineEpoch(j);
    if (!IsJobEpoch(job, epoch) || have.count(epoch)) continue;
    auto num = [&j](const char* k) { return j.contains(k) && j[k].is_number() ? j[k].get<double>() : 0.0; };
    v1::EpochMetrics m;
    m.set_phase(phase);
    m.set_epoch(epoch);
    m.set_loss(num("loss"));
    m.set_accuracy(num("accuracy"));
    m.set_val_loss(num("val_loss"));
    m.set_val_accuracy(num("val_accuracy"));
    m.set_val_auc(num("val_auc"));
    m.set_images_per_second(num("images_per_second"));
    m.set_step_data_seconds(num("step_data_seconds"));
    m.set_step_compute_seconds(num("step_compute_seconds"));
    m.set_step_allreduce_wait_seconds(num("step_allreduce_wait_seconds"));
    m.set_lr(num("lr"));
    DFC_RETURN_IF_ERROR(store_->PutEpoch(job.job_id(), m));
    have[epoch] = m;
    added = true;
  }
  if (added) {
    list->Clear();
    for (auto& [n, e] : have) *list->Add() = e;
  }
  return absl::OkStatus();
}

absl::Status Coordinator::Save(const v1::Job& job) {
  DFC_RETURN_IF_ERROR(store_->Update(job));
  Cache(job);
  return absl::OkStatus();
}

void Coordinator::Cache(const v1::Job& job) {
  if (options_.on_job_change) {
    auto it = jobs_.find(job.job_id());
    options_.on_job_change(it == jobs_.end() ? nullptr : &it->second, job);
  }
  jobs_[job.job_id()] = job;  // callers pass a copy of the cached job, epochs included
  versions_[job.job_id()]++;
  changed_.SignalAll();
}

absl::StatusOr<v1::SubmitJobResponse> Coordinator::Submit(const v1::SubmitJobRequest& request) {
  DFC_RETURN_IF_ERROR(ValidateSubmit(request, options_.data_roots));
  absl::MutexLock lock(&mu_);
  const int capacity = TotalLiveSlotsLocked();
  std::string warning;
  if (capacity > 0 && request.world_size() > capacity) {
    const std::string why = absl::StrCat("world_size ", request.world_size(), " exceeds the ", capacity,
                                         " slot(s) of all live workers together");
    if (!request.wait_for_capacity()) {
      return absl::FailedPreconditionError(absl::StrCat(why, "; add workers, or submit with --wait-for-capacity "
                                                             "to keep it queued until they join"));
    }
    warning = absl::StrCat(why, "; it waits until workers join (other jobs run meanwhile)");
  } else if (capacity == 0) {
    warning = "no live workers yet; the job waits for them";
  }
  auto created = store_->Create(request, options_.output_root, Now());
  if (!created.ok()) {
    return absl::Status(created.status().code(), absl::StrCat("the job was not submitted: ", created.status().message()));
  }
  v1::SubmitJobResponse resp;
  resp.set_job_id(created->first.job_id());
  resp.set_existing(created->second);
  resp.set_warning(warning);
  if (!created->second) {
    v1::Job job = created->first;
    AddEvent(job, "submitted", absl::StrCat("world size ", job.world_size(), ", priority ", job.priority(),
                                            warning.empty() ? "" : "; ", warning));
    // The job is written (Create); should its event not be, it is written
    // with the job's next change.
    (void)store_->Update(job);
    Cache(job);
    ScheduleLocked();
  }
  return resp;
}

absl::Status Coordinator::NoJob(const std::string& job_id) {
  auto deleted = store_->DeletedAt(job_id);
  if (deleted.ok() && *deleted > 0) {
    return absl::NotFoundError(absl::StrCat("job_id: job '", job_id, "' was deleted at ",
                                            absl::FormatTime("%Y-%m-%d %H:%M:%S UTC", absl::FromUnixMillis(*deleted),
                                                             absl::UTCTimeZone())));
  }
  return absl::NotFoundError(absl::StrCat("job_id: no job '", job_id, "'"));
}

absl::StatusOr<v1::Job> Coordinator::GetJob(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return NoJob(job_id);
  v1::Job job = it->second;
  FillWaitingLocked(&job, QueueOrderLocked());
  return job;
}

absl::StatusOr<v1::ListJobsResponse> Coordinator::ListJobs(const v1::ListJobsRequest& request) {
  if (request.page_size() < 0 || request.page_size() > 1000) {
    return absl::InvalidArgumentError(absl::StrCat("page_size: must be in [0, 1000], got ", request.page_size()));
  }
  const size_t page = request.page_size() == 0 ? 100 : static_cast<size_t>(request.page_size());
  // The token is the (created, id) of the page's last job: stable while jobs
  // are added (new ones sort after it).
  int64_t after_ms = -1;
  std::string after_id;
  if (!request.page_token().empty()) {
    std::string raw;
    const size_t colon = absl::Base64Unescape(request.page_token(), &raw) ? raw.find(':') : std::string::npos;
    if (colon == std::string::npos || !absl::SimpleAtoi(raw.substr(0, colon), &after_ms)) {
      return absl::InvalidArgumentError("page_token: not a token from ListJobs");
    }
    after_id = raw.substr(colon + 1);
  }
  absl::MutexLock lock(&mu_);
  std::vector<const v1::Job*> all;
  for (const auto& [id, job] : jobs_) {
    if (request.state() != v1::JOB_STATE_UNSPECIFIED && job.state() != request.state()) continue;
    if (std::make_pair(job.created_unix_ms(), job.job_id()) <= std::make_pair(after_ms, after_id)) continue;
    all.push_back(&job);
  }
  std::sort(all.begin(), all.end(), [](const v1::Job* a, const v1::Job* b) {
    return std::make_pair(a->created_unix_ms(), a->job_id()) < std::make_pair(b->created_unix_ms(), b->job_id());
  });
  v1::ListJobsResponse resp;
  const std::vector<std::string> order = QueueOrderLocked();  // once per page, not per job
  for (size_t i = 0; i < all.size() && i < page; ++i) {
    v1::Job* s = resp.add_jobs();
    *s = *all[i];
    s->set_epochs_done(s->epochs_size());
    s->set_selection_epochs_done(s->selection_epochs_size());
    if (s->epochs_size() > 0) *s->mutable_last_epoch() = s->epochs(s->epochs_size() - 1);
    s->clear_epochs();
    s->clear_selection_epochs();
    s->clear_failures();
    s->clear_events();
    FillWaitingLocked(s, order);
  }
  if (all.size() > page) {
    const v1::Job& last = *all[page - 1];
    resp.set_next_page_token(absl::Base64Escape(absl::StrCat(last.created_unix_ms(), ":", last.job_id())));
  }
  return resp;
}

absl::StatusOr<v1::Job> Coordinator::Cancel(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) return NoJob(job_id);
  v1::Job job = it->second;
  if (IsTerminal(job.state())) {
    return absl::FailedPreconditionError(absl::StrCat("job ", job_id, " already ended (",
                                                      v1::JobState_Name(job.state()), ")"));
  }
  job.set_state(v1::CANCELLED);
  job.set_reason("cancelled by request");
  job.set_finished_unix_ms(Now());
  AddEvent(job, "cancelled", "cancelled by request");
  if (absl::Status st = Save(job); !st.ok()) {  // nothing is stopped unless the cancel is written
    return absl::Status(st.code(), absl::StrCat("the job was not cancelled: ", st.message()));
  }
  StopRanks(job_id);
  ScheduleLocked();
  return jobs_[job_id];
}

absl::StatusOr<std::string> Coordinator::Delete(const std::string& job_id, bool outputs) {
  std::string run_dir;
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return NoJob(job_id);
    const v1::Job& job = it->second;
    if (!IsTerminal(job.state())) {
      return absl::FailedPreconditionError(absl::StrCat("job ", job_id, " is ", v1::JobState_Name(job.state()),
                                                        ": only a job that ended can be deleted (dfc cancel ", job_id,
                                                        " first)"));
    }
    if (outputs) {
      // Compared as paths: a root given with a trailing '/' made the
      // record's ROOT//JOB.
      const fs::path expected = (fs::path(options_.output_root) / job_id).lexically_normal();
      if (fs::path(job.output_dir()).lexically_normal() != expected) {
        return absl::FailedPreconditionError(absl::StrCat(
            "job ", job_id, "'s outputs are at '", job.output_dir(), "', outside this coordinator's output root '",
            options_.output_root, "': nothing was deleted (remove them by hand, then delete the job without outputs)"));
      }
      std::error_code ec;
      const std::vector<std::string> within = {fs::weakly_canonical(expected, ec).string()};
      for (const auto& [other_id, other] : jobs_) {
        if (IsTerminal(other.state())) continue;
        for (const std::string& path : {other.config().init(), other.config().data()}) {
          if (InsideRoots(path, within)) {
            return absl::FailedPreconditionError(absl::StrCat(
                "job ", other_id, " (", v1::JobState_Name(other.state()), ") reads '", path, "' from job ", job_id,
                "'s outputs: nothing was deleted (delete them once it has ended)"));
          }
        }
      }
      run_dir = expected.string();
    }
  }
  // Outside the lock (a run directory may hold gigabytes of checkpoints);
  // first, so that what cannot be removed leaves a record to delete again.
  if (!run_dir.empty()) {
    std::error_code ec;
    // Not from under a run that writes there: a `dfc train --resume` that
    // goes on with the job by hand, or a rank of it still running on a worker
    // cut off from this coordinator. Held while removing, so none starts.
    int held = -1;
    if (fs::is_directory(run_dir, ec)) {
      auto lock = TryLockFile((fs::path(run_dir) / run_dir::kLockFile).string(), LockMode::kExclusive,
                              absl::StrCat("dfc-coordinator deleting job ", job_id, "'s outputs (", ThisProcess(), ")"));
      if (absl::IsFailedPrecondition(lock.status())) {
        return absl::FailedPreconditionError(absl::StrCat("job ", job_id, "'s outputs at '", run_dir, "' are in use by ",
                                                          lock.status().message(), ": nothing was deleted (delete them "
                                                          "once it has ended, or delete the job without --outputs)"));
      }
      if (lock.ok()) held = *lock;
    }
    fs::remove_all(run_dir, ec);
    if (held >= 0) ::close(held);
    if (ec) {
      return absl::InternalError(absl::StrCat("the job was not deleted: its outputs at '", run_dir,
                                              "' could not all be removed (", ec.message(), "); what is left is there"));
    }
  }
  absl::MutexLock lock(&mu_);
  if (!jobs_.count(job_id)) return NoJob(job_id);
  if (absl::Status st = DeleteRecordLocked(job_id); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("the job was not deleted: ", st.message()));
  }
  return run_dir;
}

absl::Status Coordinator::DeleteRecordLocked(const std::string& job_id) {
  DFC_RETURN_IF_ERROR(store_->Delete(job_id, Now()));
  jobs_.erase(job_id);
  versions_.erase(job_id);
  not_before_ms_.erase(job_id);
  leave_holds_.erase(job_id);
  unclaimed_.erase(job_id);
  bypassed_.erase(job_id);
  for (const auto& [wid, w] : workers_) forget_[wid].insert(job_id);
  changed_.SignalAll();  // watchers hear that it is gone
  return absl::OkStatus();
}

void Coordinator::DeleteExpiredLocked() {
  if (options_.keep_ended.count() <= 0 || Elapsed() < next_expiry_ms_) return;
  next_expiry_ms_ = Elapsed() + 60000;
  const int64_t cutoff = Now() - options_.keep_ended.count();
  std::vector<std::string> expired;
  for (const auto& [id, job] : jobs_) {
    const int64_t ended = job.finished_unix_ms() > 0 ? job.finished_unix_ms() : job.created_unix_ms();
    if (IsTerminal(job.state()) && ended < cutoff) expired.push_back(id);
  }
  int deleted = 0;
  for (const std::string& id : expired) {
    if (!DeleteRecordLocked(id).ok()) break;  // the store logs why; tried again a minute later
    ++deleted;
  }
  if (deleted > 0) {
    std::fprintf(stderr, "dfc-coordinator: deleted %d job(s) that ended more than %lld h ago (--keep-ended-days)\n",
                 deleted, static_cast<long long>(options_.keep_ended.count() / 3600000));
  }
}

absl::StatusOr<v1::Job> Coordinator::WaitForChange(const std::string& job_id, int64_t* version,
                                                   std::chrono::milliseconds timeout) {
  absl::MutexLock lock(&mu_);
  if (!jobs_.count(job_id)) return NoJob(job_id);
  const absl::Time deadline = absl::Now() + absl::FromChrono(timeout);
  while (jobs_.count(job_id) && versions_[job_id] == *version && !changed_.WaitWithDeadline(&mu_, deadline)) {
  }
  if (!jobs_.count(job_id)) return absl::NotFoundError(absl::StrCat("job_id: job '", job_id, "' was deleted"));
  *version = versions_[job_id];
  v1::Job job = jobs_[job_id];
  FillWaitingLocked(&job, QueueOrderLocked());
  return job;
}

absl::StatusOr<v1::RegisterWorkerResponse> Coordinator::RegisterWorker(const v1::RegisterWorkerRequest& r) {
  const int slots = r.gpus() > 0 ? r.gpus() : r.cpu_slots();
  if (slots < 1 || slots > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("cpu_slots/gpus: a worker needs 1..1024 slots, got ", slots));
  }
  if (r.address().empty()) return absl::InvalidArgumentError("address: required");
  absl::MutexLock lock(&mu_);
  const std::string id = WorkerIdLocked(r.previous_worker_id());
  workers_[id] = WorkerInfo{r.address(), slots, Elapsed(), r.cpu_slots(), r.gpus()};
  // Its ranks, before anything is placed on it: those of a job taken over
  // from the coordinator before a restart are claimed, and hold their slots.
  // What else they say (a stale rank's stop, an exit) is said again by the
  // next heartbeat.
  {
    v1::HeartbeatResponse ignored;
    for (int i = 0; i < std::min(r.ranks_size(), slots); ++i) (void)RecordRankStatusLocked(id, r.ranks(i), &ignored);
    CountStoppingLocked(id, r.ranks());  // the rest hold their slots until they have gone
    (void)AdvanceJobsLocked();
  }
  v1::RegisterWorkerResponse resp;
  resp.set_worker_id(id);
  resp.set_heartbeat_interval_ms(static_cast<int32_t>(options_.heartbeat_interval.count()));
  // Folders of jobs deleted while the worker was away (or before this
  // coordinator restarted, which forgets forget_).
  for (int i = 0; i < std::min(r.held_jobs_size(), kMaxHeldJobs); ++i) {
    const std::string& job = r.held_jobs(i);
    if (jobs_.count(job) || !IsPlainName(job)) continue;
    auto deleted = store_->DeletedAt(job);
    if (deleted.ok() && *deleted > 0) resp.add_forget_jobs(job);
  }
  ScheduleLocked();
  return resp;
}

std::string Coordinator::WorkerIdLocked(const std::string& previous) {
  if (previous.size() <= 64 && absl::StartsWith(previous, "worker-") && IsPlainName(previous) &&
      !workers_.count(previous) && RanksOn(previous) == 0) {
    // Back from gone or left: a worker that was frozen or cut off, or that
    // restarted on its work directory.
    gone_.erase(std::remove_if(gone_.begin(), gone_.end(), [&](const GoneWorker& g) { return g.id == previous; }),
                gone_.end());
    return previous;
  }
  std::string id;
  do {
    id = absl::StrCat("worker-", next_worker_++, "-", Now() % 100000);
  } while (workers_.count(id));
  return id;
}

int Coordinator::RanksOn(const std::string& worker_id) const {
  int ranks = 0;
  for (const auto& [id, a] : active_) {
    for (const RankSlot& s : a.ranks) ranks += s.worker_id == worker_id;
  }
  return ranks;
}

int Coordinator::FreeSlots(const std::string& worker_id) const {
  auto w = workers_.find(worker_id);
  if (w == workers_.end()) return 0;
  return w->second.slots - RanksOn(worker_id) - w->second.stopping;
}

bool Coordinator::OwnedLocked(const std::string& worker_id, const v1::RankStatus& st) const {
  auto a = active_.find(st.job_id());
  return a != active_.end() && a->second.attempt == st.attempt() && st.rank() >= 0 &&
         st.rank() < static_cast<int>(a->second.ranks.size()) && a->second.ranks[st.rank()].worker_id == worker_id;
}

void Coordinator::CountStoppingLocked(const std::string& worker_id,
                                      const google::protobuf::RepeatedPtrField<v1::RankStatus>& ranks) {
  auto w = workers_.find(worker_id);
  if (w == workers_.end()) return;
  int stopping = 0;
  for (const v1::RankStatus& st : ranks) stopping += st.running() && !OwnedLocked(worker_id, st);
  w->second.stopping = std::min(stopping, w->second.slots);  // it can free no more than its slots
}

void Coordinator::StopRanks(const std::string& job_id) {
  auto it = active_.find(job_id);
  if (it == active_.end()) return;
  for (const RankSlot& s : it->second.ranks) {
    if (s.worker_id.empty()) continue;  // not reported back since a restart: stopped as stale if it is
    int& attempt = stop_[s.worker_id][job_id];
    attempt = std::max(attempt, it->second.attempt);
    // Its slot stays taken until the worker reports the rank gone: a rank
    // told to stop first saves its step (up to the worker's stop grace), and
    // a rank placed there meanwhile would share its GPU.
    if (auto w = workers_.find(s.worker_id); w != workers_.end() && s.sent && !s.exited) {
      w->second.stopping = std::min(w->second.stopping + 1, w->second.slots);
    }
  }
  active_.erase(it);
}

void Coordinator::RecordFailure(v1::Job& job, const std::string& reason, bool permanent) const {
  v1::AttemptFailure* f = job.add_failures();
  f->set_attempt(job.attempt());
  f->set_reason(reason);
  f->set_unix_ms(Now());
  f->set_permanent(permanent);
}

void Coordinator::AddEvent(v1::Job& job, const std::string& kind, const std::string& message) const {
  v1::TimelineEvent* e = job.add_events();
  e->set_unix_ms(Now());
  e->set_kind(kind);
  e->set_message(message.substr(0, 1000));
  e->set_attempt(job.attempt());
  constexpr int kMaxEvents = 100;
  if (job.events_size() > kMaxEvents) job.mutable_events()->DeleteSubrange(0, job.events_size() - kMaxEvents);
}

std::vector<std::string> Coordinator::QueueOrderLocked() const {
  std::vector<const v1::Job*> queued;
  for (const auto& [id, job] : jobs_) {
    if (job.state() == v1::QUEUED) queued.push_back(&job);
  }
  std::sort(queued.begin(), queued.end(), [](const v1::Job* a, const v1::Job* b) {
    if (a->priority() != b->priority()) return a->priority() > b->priority();
    if (a->created_unix_ms() != b->created_unix_ms()) return a->created_unix_ms() < b->created_unix_ms();
    return a->job_id() < b->job_id();
  });
  std::vector<std::string> ids;
  for (const v1::Job* j : queued) ids.push_back(j->job_id());
  return ids;
}

void Coordinator::FillWaitingLocked(v1::Job* job, const std::vector<std::string>& order) {
  job->clear_waiting();
  if (job->state() != v1::QUEUED) return;
  const int position = static_cast<int>(std::find(order.begin(), order.end(), job->job_id()) - order.begin()) + 1;
  const int64_t now = Elapsed();
  int free = 0, live = 0, stopping = 0;
  for (const auto& [wid, w] : workers_) {
    if (Late(w, now)) continue;
    ++live;
    free += std::max(0, FreeSlots(wid));
    stopping += w.stopping;
  }
  const int capacity = TotalLiveSlotsLocked();
  const int need = job->world_size();
  v1::QueueWait* w = job->mutable_waiting();
  w->set_position(position);
  auto backoff = not_before_ms_.find(job->job_id());
  std::string reason;
  if (live == 0) {
    reason = absl::StrCat("needs ", need, " slot(s); no live workers");
  } else if (need > capacity) {
    w->set_can_never_fit(true);
    reason = absl::StrCat("needs ", need, " slots; the live workers have ", capacity,
                          " in all: it cannot run until more workers join");
  } else if (auto unclaimed = unclaimed_.find(job->job_id()); unclaimed != unclaimed_.end()) {
    reason = absl::StrCat(unclaimed->second, " (tried again every ", RetryDelayMs() / 1000.0, " s)");
  } else if (backoff != not_before_ms_.end() && now < backoff->second) {
    reason = absl::StrCat("restarting: placed again in ", (backoff->second - now + 999) / 1000, " s");
  } else if (free < need) {
    reason = absl::StrCat("needs ", need, " slot", need == 1 ? "" : "s", " on live workers; ", free, " free");
    if (stopping > 0) {
      absl::StrAppend(&reason, " (", stopping, " held by ranks of ended attempts that are still stopping: they save "
                      "their step first)");
    }
  } else if (position > 1) {
    reason = absl::StrCat(position - 1, " job(s) ahead of it in the queue");
  } else {
    reason = "being placed";
  }
  if (position > 1 && free < need && need <= capacity) absl::StrAppend(&reason, "; ", position - 1, " job(s) ahead");
  w->set_reason(reason);
}

absl::Status Coordinator::FailAttempt(const std::string& job_id, const std::string& reason, bool permanent) {
  v1::Job job = jobs_[job_id];
  RecordFailure(job, reason, permanent);
  int64_t not_before = 0;
  if (!permanent && job.restarts() < job.max_restarts()) {
    job.set_restarts(job.restarts() + 1);
    job.set_state(v1::QUEUED);
    job.set_reason(absl::StrCat("restarting (", job.restarts(), " of ", job.max_restarts(), ") after: ", reason));
    // Each further restart waits twice as long, so a fault that lasts a while
    // (a full disk, a peer machine rebooting) does not use up every restart
    // within seconds.
    int64_t backoff = RetryDelayMs();
    for (int i = 1; i < job.restarts() && backoff < options_.max_restart_backoff.count(); ++i) backoff *= 2;
    backoff = std::min<int64_t>(backoff, options_.max_restart_backoff.count());
    not_before = Elapsed() + backoff;
    AddEvent(job, "restart", absl::StrCat("restart ", job.restarts(), " of ", job.max_restarts(), ", placed again in ",
                                          absl::StrFormat("%.1f", static_cast<double>(backoff) / 1000), " s: ", reason));
  } else {
    job.set_state(v1::FAILED);
    if (permanent) {
      job.set_reason(absl::StrCat("permanent error, not retried: ", reason));
    } else if (job.failures_size() == 1) {
      job.set_reason(reason);
    } else {
      // The first error is the root cause; later attempts often fail because of it.
      job.set_reason(absl::StrCat(job.failures(0).reason(), " (and ", job.failures_size() - 1,
                                  " more failed attempt(s); last: ", reason, ")"));
    }
    job.set_finished_unix_ms(Now());
    AddEvent(job, "failed", job.reason());
  }
  job.clear_workers();
  job.clear_progress();
  // The attempt ends once that is written; until then its ranks stay the
  // job's (a failed write is tried again at the next heartbeat).
  DFC_RETURN_IF_ERROR(Save(job));
  StopRanks(job_id);
  if (not_before > 0) not_before_ms_[job_id] = not_before;
  return absl::OkStatus();
}

void Coordinator::CreditOwnPauseLocked() {
  const int64_t now = Elapsed();
  const int64_t paused = last_ran_ms_ > 0 ? now - last_ran_ms_ - options_.heartbeat_interval.count() : 0;
  last_ran_ms_ = now;
  if (paused <= 0) return;
  for (auto& [id, w] : workers_) w.last_seen_ms += paused;
  for (auto& [address, seen] : servers_) seen += paused;
  for (auto& [id, a] : active_) a.scheduled_ms += paused;
  if (paused >= options_.heartbeat_interval.count()) {
    std::fprintf(stderr, "dfc-coordinator: did not run for %.1f s (stopped or starved); that time is not held "
                 "against the workers\n", static_cast<double>(paused + options_.heartbeat_interval.count()) / 1000);
  }
}

void Coordinator::ExpireWorkersLocked() {
  CreditOwnPauseLocked();
  const int64_t now = Elapsed();
  std::vector<std::string> dead;
  for (const auto& [id, w] : workers_) {
    if (now - w.last_seen_ms > options_.worker_timeout.count()) dead.push_back(id);
  }
  for (const std::string& id : dead) RetireWorkerLocked(id, "gone");
  // Attempts with a rank on a worker that is gone, now or at an earlier tick
  // whose failure could not be written (the store logs why; tried again here).
  std::vector<std::pair<std::string, std::string>> hit;  // job, worker
  for (const auto& [job_id, a] : active_) {
    for (const RankSlot& s : a.ranks) {
      if (!s.worker_id.empty() && !workers_.count(s.worker_id)) {
        hit.emplace_back(job_id, s.worker_id);
        break;
      }
    }
  }
  for (const auto& [job_id, worker_id] : hit) {
    (void)FailAttempt(job_id, absl::StrCat("worker ", worker_id, " stopped responding"));
  }
  for (auto it = stop_.begin(); it != stop_.end();) {  // nobody is left to tell
    it = workers_.count(it->first) ? std::next(it) : stop_.erase(it);
  }
  for (auto it = forget_.begin(); it != forget_.end();) {
    it = workers_.count(it->first) ? std::next(it) : forget_.erase(it);
  }
}

int Coordinator::TotalLiveSlotsLocked() const {
  int total = 0;
  for (const auto& [wid, w] : workers_) total += w.slots;
  return total;
}

// Priority, then FIFO, with bounded backfill: when the head job does not fit
// the free slots, later jobs that fit may start ahead of it, at most
// max_bypass of them; then the head holds the queue until it runs, so a
// stream of small jobs cannot starve a large one. A job that can never fit
// (more ranks than every live worker's slots together; queued only on
// request) is passed over without blocking anyone.
void Coordinator::ScheduleLocked() {
  const std::vector<std::string> ids = QueueOrderLocked();
  const int64_t now = Elapsed();
  const int capacity = TotalLiveSlotsLocked();
  std::string head;  // the first job that waits (and may be bypassed)
  for (const std::string& id : ids) {
    v1::Job job = jobs_[id];
    if (capacity > 0 && job.world_size() > capacity) continue;  // can never fit now: blocks nobody
    auto wait = not_before_ms_.find(id);
    const bool backing_off = wait != not_before_ms_.end() && now < wait->second;
    std::vector<std::pair<int, std::string>> free;
    int total = 0;
    for (const auto& [wid, w] : workers_) {
      // Only workers heard from within two heartbeats take new ranks.
      if (Late(w, now)) continue;
      const int f = FreeSlots(wid);
      if (f > 0) {
        free.emplace_back(f, wid);
        total += f;
      }
    }
    if (backing_off || total < job.world_size()) {  // gang: all ranks or none
      if (head.empty()) {
        head = id;
        if (bypassed_[head] >= options_.max_bypass) break;  // the head's turn is next: nobody else starts
      }
      continue;
    }
    // Fencing: from now on a rank of an earlier attempt that still runs (its
    // worker frozen or cut off) writes nothing more to the run directory, and
    // a rank that does not find this claim is on a worker that does not share
    // the output root. A job whose run directory cannot be claimed (a full
    // or unwritable output root) waits, and is tried again after a back-off.
    const int attempt = job.attempt() + 1;
    if (absl::Status st = run_dir::ClaimForAttempt(job.output_dir(), attempt); !st.ok()) {
      const std::string why = absl::StrCat("cannot claim its run directory for attempt ", attempt, ": ", st.message());
      if (unclaimed_[id] != why) std::fprintf(stderr, "dfc-coordinator: %s %s\n", id.c_str(), why.c_str());
      unclaimed_[id] = why;
      not_before_ms_[id] = now + RetryDelayMs();
      if (head.empty()) {
        head = id;
        if (bypassed_[head] >= options_.max_bypass) break;
      }
      continue;
    }
    unclaimed_.erase(id);
    if (!head.empty()) ++bypassed_[head];
    bypassed_.erase(id);
    std::sort(free.begin(), free.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    ActiveJob a;
    a.attempt = attempt;
    a.scheduled_ms = now;
    for (auto& [f, wid] : free) {
      while (f > 0 && static_cast<int>(a.ranks.size()) < job.world_size()) {
        RankSlot s;
        s.worker_id = wid;
        a.ranks.push_back(s);
        --f;
      }
    }
    a.store_host = workers_[a.ranks[0].worker_id].address;
    a.rendezvous_key = RandomHexToken();
    not_before_ms_.erase(id);
    leave_holds_.erase(id);
    job.set_attempt(a.attempt);
    job.set_state(v1::SCHEDULED);
    job.clear_workers();
    for (const RankSlot& s : a.ranks) job.add_workers(s.worker_id);
    {
      std::string placement;
      for (size_t r = 0; r < a.ranks.size(); ++r) {
        absl::StrAppend(&placement, r ? ", " : "", "rank ", r, " on ", a.ranks[r].worker_id);
      }
      AddEvent(job, "scheduled", absl::StrCat("attempt ", a.attempt, ": ", placement));
      v1::Placement* p = job.add_placements();
      p->set_attempt(a.attempt);
      for (const RankSlot& slot : a.ranks) p->add_workers(slot.worker_id);
      if (job.placements_size() > 20) job.mutable_placements()->DeleteSubrange(0, job.placements_size() - 20);
    }
    active_[id] = std::move(a);
    if (!Save(job).ok()) {  // the store logs why; placed again at the next tick (the cached job is still QUEUED)
      active_.erase(id);
      return;
    }
  }
}

void Coordinator::RequeueUnstartedLocked() {
  const int64_t now = Elapsed();
  std::vector<std::string> late;
  for (const auto& [id, a] : active_) {
    if (jobs_[id].state() == v1::SCHEDULED && now - a.scheduled_ms > options_.schedule_timeout.count() &&
        !(a.ranks.size() > 0 && a.ranks[0].running)) {
      late.push_back(id);
    }
  }
  for (const std::string& id : late) {
    v1::Job job = jobs_[id];
    const std::string reason = absl::StrCat("rank 0 did not start within ", options_.schedule_timeout.count() / 1000,
                                            " s of scheduling; back to the queue");
    RecordFailure(job, reason, /*permanent=*/false);
    (void)RequeueLocked(std::move(job), reason);  // the store logs why; tried again at the next tick
  }
}

absl::Status Coordinator::RequeueLocked(v1::Job job, const std::string& reason) {
  job.set_state(v1::QUEUED);
  job.clear_workers();
  AddEvent(job, "requeued", reason);
  DFC_RETURN_IF_ERROR(Save(job));
  StopRanks(job.job_id());
  return absl::OkStatus();
}

void Coordinator::RetireWorkerLocked(const std::string& worker_id, const std::string& state) {
  gone_.push_back(GoneWorker{worker_id, workers_[worker_id], state});
  if (gone_.size() > 16) gone_.pop_front();
  workers_.erase(worker_id);
}

absl::Status Coordinator::LeaveLocked(const std::string& worker_id, int64_t stop_grace_ms) {
  std::vector<std::string> hit;
  for (const auto& [job_id, a] : active_) {
    for (const RankSlot& s : a.ranks) {
      if (s.worker_id == worker_id) {
        hit.push_back(job_id);
        break;
      }
    }
  }
  const std::string reason = absl::StrCat("worker ", worker_id, " shut down (SIGTERM: a drain, an upgrade or a "
                                          "scale-down) and stopped its ranks, which save their step; not counted as "
                                          "a restart");
  for (const std::string& id : hit) {
    v1::Job job = jobs_[id];
    RecordFailure(job, reason, /*permanent=*/false);
    job.clear_progress();
    DFC_RETURN_IF_ERROR(RequeueLocked(std::move(job), reason));
    // The ranks stop first, saving their step: placed again once the
    // leaving worker would have killed them (at most a minute).
    not_before_ms_[id] = Elapsed() + RetryDelayMs() + std::clamp<int64_t>(stop_grace_ms, 0, 60000);
    if (stop_grace_ms > 0) leave_holds_[id] = LeaveHold{worker_id, Elapsed()};
  }
  RetireWorkerLocked(worker_id, "left");
  stop_.erase(worker_id);
  forget_.erase(worker_id);
  log_requests_.erase(worker_id);
  std::fprintf(stderr, "dfc-coordinator: worker %s left (shut down); %zu job(s) back in the queue\n", worker_id.c_str(),
               hit.size());
  return absl::OkStatus();
}

void Coordinator::EndLeaveHoldsLocked(const std::string& worker_id) {
  int ended = 0;
  for (auto it = leave_holds_.begin(); it != leave_holds_.end();) {
    if (it->second.worker_id != worker_id) {
      ++it;
      continue;
    }
    if (auto wait = not_before_ms_.find(it->first); wait != not_before_ms_.end()) {
      wait->second = std::min(wait->second, std::max(Elapsed(), it->second.left_ms + RetryDelayMs()));
      ++ended;
    }
    it = leave_holds_.erase(it);
  }
  if (ended == 0) return;
  std::fprintf(stderr, "dfc-coordinator: the ranks of worker %s (left) have stopped; %d job(s) held back for its "
               "stop grace may be placed again\n", worker_id.c_str(), ended);
  ScheduleLocked();
}

absl::Status Coordinator::FinishReattachLocked(const std::string& job_id, ActiveJob& a) {
  v1::Job job = jobs_[job_id];
  job.clear_workers();
  std::string placement;
  for (size_t r = 0; r < a.ranks.size(); ++r) {
    job.add_workers(a.ranks[r].worker_id);
    absl::StrAppend(&placement, r ? ", " : "", "rank ", r, " on ", a.ranks[r].worker_id);
  }
  // `dfc logs` finds a rank's worker by its attempt's placement.
  for (v1::Placement& p : *job.mutable_placements()) {
    if (p.attempt() == a.attempt) *p.mutable_workers() = job.workers();
  }
  AddEvent(job, "reattached", absl::StrCat("attempt ", a.attempt, " ran on while the coordinator was away: ", placement));
  DFC_RETURN_IF_ERROR(Save(job));
  a.reattaching = false;
  if (auto w = workers_.find(a.ranks[0].worker_id); w != workers_.end()) a.store_host = w->second.address;
  return absl::OkStatus();
}

void Coordinator::RequeueUnreattachedLocked() {
  const int64_t now = Elapsed();
  std::vector<std::pair<std::string, std::string>> late;  // job, why
  for (const auto& [id, a] : active_) {
    if (!a.reattaching || now - a.scheduled_ms <= options_.reattach_timeout.count()) continue;
    std::string missing;
    for (size_t r = 0; r < a.ranks.size(); ++r) {
      if (a.ranks[r].worker_id.empty()) absl::StrAppend(&missing, missing.empty() ? "" : ", ", r);
    }
    late.emplace_back(id, absl::StrCat("the coordinator restarted and rank(s) ", missing, " of attempt ", a.attempt,
                                       " were not reported back by a worker within ",
                                       options_.reattach_timeout.count() / 1000,
                                       " s (their worker is gone or cannot reach the coordinator); the job resumes "
                                       "from its checkpoint"));
  }
  // The ranks that were reported back are stopped; a write that fails is
  // tried again at the next tick (the store logs why).
  for (const auto& [id, why] : late) (void)RequeueLocked(jobs_[id], why);
}

void Coordinator::Tick() {
  absl::MutexLock lock(&mu_);
  ExpireWorkersLocked();
  RequeueUnstartedLocked();
  RequeueUnreattachedLocked();
  ScheduleLocked();
  DeleteExpiredLocked();
}

absl::StatusOr<v1::HeartbeatResponse> Coordinator::Heartbeat(const v1::HeartbeatRequest& r) {
  absl::MutexLock lock(&mu_);
  v1::HeartbeatResponse resp;
  auto w = workers_.find(r.worker_id());
  if (w == workers_.end()) {
    if (r.leaving() && r.ranks_stopped()) {  // it left before: its last word
      EndLeaveHoldsLocked(r.worker_id());
      return resp;
    }
    resp.set_reregister(true);
    return resp;
  }
  CreditOwnPauseLocked();  // before this worker's time is refreshed
  w->second.last_seen_ms = Elapsed();
  for (const v1::RankStatus& st : r.ranks()) DFC_RETURN_IF_ERROR(RecordRankStatusLocked(r.worker_id(), st, &resp));
  CountStoppingLocked(r.worker_id(), r.ranks());  // after any claims; before AdvanceJobsLocked stops more
  for (const v1::LogChunk& chunk : r.logs()) {
    if (chunk.request_id() > 0 && chunk.request_id() < next_log_request_) log_answers_[chunk.request_id()] = chunk;
  }
  while (log_answers_.size() > 64) log_answers_.erase(log_answers_.begin());  // answers nobody waits for any more
  if (r.logs_size() > 0) log_answered_.SignalAll();
  if (auto logs = log_requests_.find(r.worker_id()); logs != log_requests_.end()) {
    for (v1::LogRequest& l : logs->second) *resp.add_logs() = std::move(l);
    log_requests_.erase(logs);
  }
  DFC_RETURN_IF_ERROR(AdvanceJobsLocked());
  if (r.leaving()) {
    DFC_RETURN_IF_ERROR(LeaveLocked(r.worker_id(), r.ranks_stopped() ? 0 : r.stop_grace_ms()));
    return resp;
  }
  ExpireWorkersLocked();
  ScheduleLocked();
  AssignRanksLocked(r.worker_id(), &resp);
  auto stops = stop_.find(r.worker_id());
  if (stops != stop_.end()) {
    for (const auto& [id, attempt] : stops->second) {
      const bool told = std::any_of(resp.stop().begin(), resp.stop().end(), [&, &id = id, &attempt = attempt](
                                                                               const v1::StopRanks& s) {
        return s.job_id() == id && s.attempt() >= attempt;  // already, for the stale rank it reported
      });
      if (told) continue;
      v1::StopRanks* stop = resp.add_stop();
      stop->set_job_id(id);
      stop->set_attempt(attempt);
    }
    stop_.erase(stops);
  }
  if (auto forget = forget_.find(r.worker_id()); forget != forget_.end()) {
    for (const std::string& id : forget->second) resp.add_forget_jobs(id);
    forget_.erase(forget);
  }
  return resp;
}

absl::Status Coordinator::RecordRankStatusLocked(const std::string& worker_id, const v1::RankStatus& st,
                                                 v1::HeartbeatResponse* resp) {
  auto a = active_.find(st.job_id());
  if (a != active_.end() && a->second.reattaching && a->second.attempt == st.attempt() && st.rank() >= 0 &&
      st.rank() < static_cast<int>(a->second.ranks.size()) && a->second.ranks[st.rank()].worker_id.empty() &&
      (st.running() || st.exited())) {
    // A rank of a job taken over from the coordinator before a restart: it
    // ran on here meanwhile (no rank_started event; an exit is recorded below).
    RankSlot& slot = a->second.ranks[st.rank()];
    slot.worker_id = worker_id;
    slot.running = st.running();
    if (AllReported(a->second)) {
      DFC_RETURN_IF_ERROR(FinishReattachLocked(st.job_id(), a->second));  // else AdvanceJobsLocked tries again
    }
  }
  if (!OwnedLocked(worker_id, st)) {
    if (st.running()) {  // a stale rank: stop exactly its attempt
      v1::StopRanks* stop = resp->add_stop();
      stop->set_job_id(st.job_id());
      stop->set_attempt(st.attempt());
    }
    return absl::OkStatus();
  }
  RankSlot& slot = a->second.ranks[st.rank()];
  if (st.rank() == 0 && st.store_port() > 0) a->second.store_port = st.store_port();
  const bool started = st.running() && !slot.running && !slot.exited;
  const bool exited = st.exited() && !slot.exited;
  if (started || exited) {
    // The slot changes once its event is written: until then the heartbeat
    // fails and the worker reports the same again.
    v1::Job job = jobs_[st.job_id()];
    if (started) AddEvent(job, "rank_started", absl::StrCat("rank ", st.rank(), " on ", worker_id));
    if (exited) {
      AddEvent(job, "rank_exited", absl::StrCat("rank ", st.rank(), " on ", worker_id, " exited with code ",
                                                st.exit_code(), st.error().empty() ? "" : ": ", st.error()));
    }
    DFC_RETURN_IF_ERROR(Save(job));
  }
  slot.running = st.running();
  if (exited) {
    slot.exited = true;
    slot.exit_code = st.exit_code();
    slot.error = st.error();
  }
  return absl::OkStatus();
}

absl::Status Coordinator::AdvanceJobsLocked() {
  std::vector<std::string> ids;
  for (const auto& [id, a] : active_) ids.push_back(id);
  for (const std::string& id : ids) {
    ActiveJob& a = active_[id];
    bool all_running = true, all_ok = true, failed = false, permanent = false;
    std::string error;
    for (size_t i = 0; i < a.ranks.size(); ++i) {
      const RankSlot& s = a.ranks[i];
      all_running &= s.running || s.exited;
      all_ok &= s.exited && s.exit_code == 0;
      if (s.exited && s.exit_code != 0 && !failed) {
        failed = true;
        permanent = s.exit_code == kRankExitPermanent;
        error = s.error.empty() ? absl::StrCat("rank ", i, " exited with status ", s.exit_code)
                                : absl::StrCat("rank ", i, ": ", s.error);
      }
    }
    // A job leaves active_ only once its new state is written: a write that
    // fails (a full disk) is tried again at the next heartbeat.
    absl::Status st;
    if (a.reattaching && AllReported(a)) {
      DFC_RETURN_IF_ERROR(FinishReattachLocked(id, a));
    } else if (a.reattaching && !failed) {
      continue;  // a rank that failed meanwhile fails the attempt now; otherwise wait for the rest
    }
    v1::Job job = jobs_[id];
    if (failed) {
      st = FailAttempt(id, error, permanent);
    } else if (all_ok) {
      st = ReconcileEpochsLocked(job);
      job.set_state(v1::SUCCEEDED);
      job.clear_reason();  // an earlier attempt's failure stays in `failures`, not as the reason
      job.clear_progress();
      job.set_finished_unix_ms(Now());
      AddEvent(job, "succeeded", absl::StrCat(job.epochs_size(), " epoch(s)"));
      if (st.ok()) st = Save(job);
      if (st.ok()) active_.erase(id);
    } else if (all_running && job.state() == v1::SCHEDULED) {
      job.set_state(v1::RUNNING);
      if (job.started_unix_ms() == 0) job.set_started_unix_ms(Now());
      AddEvent(job, "running", absl::StrCat("all ", a.ranks.size(), " rank(s) started"));
      st = Save(job);
    }
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

void Coordinator::AssignRanksLocked(const std::string& worker_id, v1::HeartbeatResponse* resp) {
  // Rank 0 first (it picks the store port), the others once its port is known.
  for (auto& [id, a] : active_) {
    for (size_t i = 0; i < a.ranks.size(); ++i) {
      RankSlot& s = a.ranks[i];
      if (s.worker_id != worker_id || s.sent) continue;
      if (i > 0 && a.store_port == 0) continue;
      const v1::Job& job = jobs_[id];
      v1::RankAssignment* as = resp->add_start();
      as->set_job_id(id);
      as->set_attempt(a.attempt);
      as->set_rank(static_cast<int>(i));
      as->set_world_size(static_cast<int>(a.ranks.size()));
      as->set_store_host(a.store_host);
      as->set_store_port(a.store_port);
      as->set_rendezvous_key(a.rendezvous_key);
      *as->mutable_config() = job.config();
      as->set_output_dir(job.output_dir());
      as->set_resume(run_dir::HasResumePoint(job.output_dir()));
      s.sent = true;
    }
  }
}

absl::Status Coordinator::ReportMetrics(const v1::ReportMetricsRequest& r) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(r.job_id());
  if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("job_id: no job '", r.job_id(), "'"));
  if (r.attempt() != it->second.attempt()) return absl::OkStatus();  // a stale rank
  v1::Job& job = it->second;
  if (r.has_progress()) *job.mutable_progress() = r.progress();
  if (!r.resolved_config().empty() && r.resolved_config().size() <= 16384 &&
      r.resolved_config() != job.resolved_config()) {
    v1::Job changed = job;  // the cached job changes once it is written
    changed.set_resolved_config(r.resolved_config());
    DFC_RETURN_IF_ERROR(Save(changed));
  }
  if (!r.has_epoch()) {
    versions_[r.job_id()]++;
    changed_.SignalAll();
    return absl::OkStatus();
  }
  if (!IsJobEpoch(job, r.epoch().epoch())) {
    return absl::InvalidArgumentError(absl::StrCat("epoch.epoch ", r.epoch().epoch(), ": the job has epochs 1..",
                                                   job.config().epochs()));
  }
  DFC_RETURN_IF_ERROR(store_->PutEpoch(r.job_id(), r.epoch()));  // refuses an unknown phase
  auto* list = PhaseEpochs(job, r.epoch().phase());
  bool replaced = false;
  for (auto& e : *list) {
    if (e.epoch() == r.epoch().epoch()) {
      e = r.epoch();
      replaced = true;
    }
  }
  if (!replaced) *list->Add() = r.epoch();
  // An epoch that skips ahead means reports were lost (the coordinator was
  // down while the ranks trained on): take them from the run directory.
  if (r.epoch().epoch() > list->size()) DFC_RETURN_IF_ERROR(ReconcilePhaseLocked(job, r.epoch().phase()));
  versions_[r.job_id()]++;
  changed_.SignalAll();
  return absl::OkStatus();
}

absl::StatusOr<v1::CatalogEntry> Coordinator::GetModel(const std::string& name) {
  if (!IsPlainName(name)) return absl::InvalidArgumentError(absl::StrCat("model name '", name, "' is not valid"));
  return store_->GetModel(name);
}

absl::StatusOr<v1::RegisterModelResponse> Coordinator::RegisterModel(const v1::RegisterModelRequest& r) {
  const v1::ModelInfo& info = r.entry().info();
  if (!IsPlainName(info.name())) {
    return absl::InvalidArgumentError(
        absl::StrCat("name '", info.name(), "': use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with '.')"));
  }
  const auto& known = KnownModels();
  if (std::find(known.begin(), known.end(), info.arch()) == known.end()) {
    return absl::InvalidArgumentError(absl::StrCat("arch '", info.arch(), "': expected one of ", absl::StrJoin(known, ", ")));
  }
  std::vector<std::string> roots = options_.data_roots;
  roots.push_back(options_.output_root);
  roots.push_back(fs::weakly_canonical(fs::absolute(options_.state_dir)).string());
  if (!InsideRoots(r.entry().weights_path(), roots)) {
    return absl::InvalidArgumentError("weights_path is outside the coordinator's data roots and state directory");
  }
  v1::RegisterModelResponse resp;
  DFC_ASSIGN_OR_RETURN(*resp.mutable_replaced_path(), store_->PutModel(r.entry(), r.replace()));
  return resp;
}

absl::StatusOr<std::vector<v1::CatalogEntry>> Coordinator::ListModels() { return store_->ListModels(); }

absl::StatusOr<v1::JobOutput> Coordinator::GetJobOutput(const std::string& job_id) {
  DFC_ASSIGN_OR_RETURN(v1::Job job, GetJob(job_id));
  v1::JobOutput out;
  out.set_job_id(job.job_id());
  out.set_arch(ModelName(job.config().model()));
  out.set_output_dir(job.output_dir());
  out.set_state(job.state());
  return out;
}

absl::Status Coordinator::AnnounceServer(const std::string& address) {
  if (address.empty() || address.size() > 256 || address.find_first_of(" ,\n") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("server address '", address.substr(0, 64), "' is not host:port"));
  }
  absl::MutexLock lock(&mu_);
  CreditOwnPauseLocked();
  const int64_t now = Elapsed();
  servers_[address] = now;
  for (auto it = servers_.begin(); it != servers_.end();) {  // bounded: the gone are forgotten
    it = now - it->second > 60000 ? servers_.erase(it) : std::next(it);
  }
  return absl::OkStatus();
}

std::vector<std::string> Coordinator::ListServers() {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  for (const auto& [address, seen] : servers_) {
    if (Elapsed() - seen <= 10000) out.push_back(address);
  }
  return out;
}

v1::ListWorkersResponse Coordinator::ListWorkers() {
  absl::MutexLock lock(&mu_);
  const int64_t now = Elapsed();
  v1::ListWorkersResponse resp;
  auto fill = [&](const std::string& id, const WorkerInfo& w, const std::string& state) {
    v1::WorkerSummary* s = resp.add_workers();
    s->set_worker_id(id);
    s->set_address(w.address);
    s->set_cpu_slots(w.cpu_slots);
    s->set_gpus(w.gpus);
    s->set_slots(w.slots);
    s->set_seconds_since_heartbeat(static_cast<double>(now - w.last_seen_ms) / 1000.0);
    s->set_state(state);
    return s;
  };
  for (const auto& [id, w] : workers_) {
    const bool late = Late(w, now);
    v1::WorkerSummary* s = fill(id, w, late ? "suspect" : "live");
    s->set_free_slots(FreeSlots(id));
    s->set_stopping_ranks(w.stopping);
    for (const auto& [job_id, a] : active_) {
      for (size_t r = 0; r < a.ranks.size(); ++r) {
        if (a.ranks[r].worker_id != id) continue;
        v1::WorkerSummary::RankRef* ref = s->add_ranks();
        ref->set_job_id(job_id);
        ref->set_rank(static_cast<int32_t>(r));
        ref->set_attempt(a.attempt);
      }
    }
  }
  for (auto it = gone_.rbegin(); it != gone_.rend(); ++it) fill(it->id, it->info, it->state);
  return resp;
}

ClusterSnapshot Coordinator::Snapshot() {
  absl::MutexLock lock(&mu_);
  const int64_t now = Elapsed();
  ClusterSnapshot s;
  for (const auto& [id, job] : jobs_) {
    s.jobs[job.state()]++;
    if (job.state() != v1::RUNNING) continue;
    ClusterSnapshot::Running r;
    r.job_id = id;
    r.epoch = job.epochs_size();
    r.selection_epoch = job.selection_epochs_size();
    const auto& phase = job.epochs().empty() ? job.selection_epochs() : job.epochs();
    if (!phase.empty()) {
      const v1::EpochMetrics& e = *phase.rbegin();
      r.images_per_second = e.images_per_second();
      r.data_seconds = e.step_data_seconds();
      r.compute_seconds = e.step_compute_seconds();
      r.allreduce_wait_seconds = e.step_allreduce_wait_seconds();
    }
    s.running.push_back(r);
  }
  s.queued = s.jobs[v1::QUEUED];
  for (const auto& [id, w] : workers_) {
    const bool late = Late(w, now);
    (late ? s.workers_suspect : s.workers_live)++;
    const int free = FreeSlots(id);
    if (w.gpus > 0) {
      s.gpus += w.slots;
      s.gpus_free += free;
    } else {
      s.cpu_slots += w.slots;
      s.cpu_slots_free += free;
    }
  }
  return s;
}

absl::StatusOr<v1::GetRankLogResponse> Coordinator::GetRankLog(const v1::GetRankLogRequest& r,
                                                               std::chrono::milliseconds wait) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(r.job_id());
  if (it == jobs_.end()) return NoJob(r.job_id());
  const v1::Job& job = it->second;
  if (job.placements().empty()) {
    return absl::FailedPreconditionError(absl::StrCat("job ", r.job_id(), " has not been placed yet (",
                                                      v1::JobState_Name(job.state()), "): no rank has a log"));
  }
  const v1::Placement* placement = &job.placements(job.placements_size() - 1);
  if (r.attempt() != 0) {
    placement = nullptr;
    for (const auto& p : job.placements()) {
      if (p.attempt() == r.attempt()) placement = &p;
    }
    if (placement == nullptr) {
      return absl::NotFoundError(absl::StrCat("job ", r.job_id(), " has no attempt ", r.attempt(), " on record"));
    }
  }
  if (r.rank() < 0 || r.rank() >= placement->workers_size()) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", r.rank(), ": job ", r.job_id(), " has ranks 0..",
                                                   placement->workers_size() - 1));
  }
  const std::string worker = placement->workers(r.rank());
  if (workers_.count(worker) == 0) {
    const std::string which =
        absl::StrCat("worker ", worker, " that ran rank ", r.rank(), " of attempt ", placement->attempt());
    for (const GoneWorker& g : gone_) {
      if (g.id == worker) {
        return absl::FailedPreconditionError(absl::StrCat(
            which, g.state == "left" ? " was shut down" : " is gone (no heartbeat)",
            "; the log is in its work directory, and can be read once a worker runs there again"));
      }
    }
    // Not heard from since this coordinator started: workers register again
    // within seconds of a restart (dfc logs --follow waits for it).
    const int64_t since_ms = Elapsed() - started_ms_;
    if (since_ms < options_.reattach_timeout.count()) {
      return absl::UnavailableError(
          absl::StrCat(which, " has not registered again since the coordinator restarted ", since_ms / 1000, " s ago"));
    }
    return absl::FailedPreconditionError(absl::StrCat(
        which, " has not registered since the coordinator started ", since_ms / 1000, " s ago; the log is on it"));
  }
  v1::LogRequest req;
  req.set_request_id(next_log_request_++);
  req.set_job_id(r.job_id());
  req.set_attempt(placement->attempt());
  req.set_rank(r.rank());
  req.set_offset(std::max<int64_t>(0, r.offset()));
  req.set_max_bytes(r.max_bytes() > 0 ? std::min(r.max_bytes(), 256 << 10) : 256 << 10);
  log_requests_[worker].push_back(req);
  const absl::Time deadline = absl::Now() + absl::FromChrono(wait);
  while (log_answers_.count(req.request_id()) == 0 && !log_answered_.WaitWithDeadline(&mu_, deadline)) {
  }
  auto answer = log_answers_.find(req.request_id());
  if (answer == log_answers_.end()) {
    return absl::DeadlineExceededError(absl::StrCat("worker ", worker, " did not send the log in time"));
  }
  v1::LogChunk chunk = std::move(answer->second);
  log_answers_.erase(answer);
  if (!chunk.error().empty()) return absl::NotFoundError(chunk.error());
  v1::GetRankLogResponse resp;
  resp.set_data(std::move(*chunk.mutable_data()));
  resp.set_offset(req.offset());
  resp.set_size(chunk.size());
  resp.set_attempt(placement->attempt());
  resp.set_worker_id(worker);
  return resp;
}

}  // namespace dfc
