#include "worker/worker_agent.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstring>
#include <filesystem>
#include <algorithm>
#include <fstream>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "training/collective.h"
#include "training/rank_launcher.h"
#include "common/atomic_file.h"
#include "common/cpus.h"
#include "common/dir_lock.h"
#include "common/exit_codes.h"
#include "common/record_file.h"
#include "common/run_dir.h"
#include "common/status_macros.h"
#include "common/stop_signal.h"
#include "common/subprocess.h"
#include "common/training_config.h"
#include "common/utf8.h"

namespace dfc {
namespace fs = std::filesystem;

namespace {

// Bytes an unprivileged writer may still use on `path`'s file system; -1 if unknown.
int64_t FreeBytes(const std::string& path) {
  struct statvfs vfs;
  if (::statvfs(path.c_str(), &vfs) != 0) return -1;
  return static_cast<int64_t>(vfs.f_bavail) * static_cast<int64_t>(vfs.f_frsize);
}

// Below this, a rank's log, reports and error line are likely lost.
constexpr int64_t kLowSpace = int64_t{16} << 20;
// Below this, a rank that failed without an error line could not write one.
constexpr int64_t kNoSpace = int64_t{1} << 20;
// In the work directory: the id the worker was given (Register).
constexpr char kWorkerIdFile[] = "worker-id";

}  // namespace

WorkerAgent::~WorkerAgent() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

absl::Status WorkerAgent::Register(v1::WorkerService::Stub& stub) {
  v1::RegisterWorkerRequest req;
  req.set_address(options_.advertise_host);
  req.set_cpu_slots(options_.cpu_slots);
  req.set_gpus(options_.gpus);
  // The job folders here, so that those of jobs deleted while this worker
  // was away (or not yet registered) are named in the answer.
  std::error_code ec;
  for (fs::directory_iterator it(options_.work_dir, ec), end; !ec && it != end && req.held_jobs_size() < kMaxHeldJobs;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (IsPlainName(name) && it->is_directory(ec)) req.add_held_jobs(name);
  }
  // Ranks still here when the coordinator restarted: it takes their jobs back.
  AddRankStatuses(req.mutable_ranks());
  const std::string previous = worker_id_.empty() ? previous_id_ : worker_id_;
  req.set_previous_worker_id(previous);
  v1::RegisterWorkerResponse resp;
  auto ctx = MakeContext(options_.security);
  absl::Status st = FromGrpc(stub.RegisterWorker(ctx.get(), req, &resp));
  if (!st.ok()) return st;
  const bool again = !previous.empty() && previous == resp.worker_id();
  worker_id_ = resp.worker_id();
  if (worker_id_ != previous_id_) {
    // Kept for the next run on this work directory: the ranks' logs here
    // stay reachable through `dfc logs` under the id they ran with.
    const fs::path file = fs::path(options_.work_dir) / kWorkerIdFile;
    if (absl::Status saved = WriteFileAtomically(file.string(), worker_id_ + "\n"); !saved.ok()) {
      std::fprintf(stderr, "dfc-worker: warning: %s; a restart of this worker will not keep its id\n",
                   std::string(saved.message()).c_str());
    }
    previous_id_ = worker_id_;
  }
  interval_ = std::chrono::milliseconds(std::max(50, resp.heartbeat_interval_ms()));
  for (const std::string& job : resp.forget_jobs()) ForgetJob(job);
  // Each slot's rank gets its share of the CPUs this worker may use (its
  // pod's limit, not the node's cores): its intra-op and decode threads.
  const int slots = options_.gpus > 0 ? options_.gpus : options_.cpu_slots;
  const CpuBudget cpus = UsableCpuBudget();
  cpus_per_rank_ = CpuShare(options_.cpus > 0 ? options_.cpus : cpus.usable, slots);
  const std::string of = options_.cpus > 0
                             ? absl::StrCat("--cpus ", options_.cpus, " (this process may use ", cpus.Describe(), ")")
                             : cpus.Describe();
  std::fprintf(stderr, "dfc-worker: registered%s as %s with %d slot(s), %d CPU(s) per rank of %s\n",
               again ? " again" : "", worker_id_.c_str(), slots, cpus_per_rank_, of.c_str());
  return absl::OkStatus();
}

void WorkerAgent::StartRank(const v1::RankAssignment& a) {
  Rank r;
  r.assignment = a;
  if (a.rank() == 0 && a.store_port() == 0) {
    r.store_port = PickFreePort();
    r.assignment.set_store_port(r.store_port);
    r.assignment.set_store_host(options_.advertise_host);
  }
  std::string no_gpu;  // why a GPU worker cannot run it
  if (options_.gpus > 0) {
    std::vector<bool> used(static_cast<size_t>(options_.gpus), false);
    for (const Rank& other : ranks_) {
      if (!other.exited && other.gpu >= 0 && other.gpu < options_.gpus) {
        used[other.gpu] = true;
        absl::StrAppend(&no_gpu, no_gpu.empty() ? "" : ", ", other.assignment.job_id(), " attempt ",
                        other.assignment.attempt(), " rank ", other.assignment.rank(),
                        other.stopping ? " (stopping)" : "");
      }
    }
    for (int g = 0; g < options_.gpus && r.gpu < 0; ++g) {
      if (!used[g]) r.gpu = g;
    }
  }
  r.dir = (fs::path(options_.work_dir) / a.job_id() / absl::StrCat("attempt-", a.attempt()) /
           absl::StrCat("rank-", a.rank()))
              .string();
  std::error_code ec;
  fs::create_directories(r.dir, ec);
  r.started = std::chrono::steady_clock::now();
  r.hang_timeout = a.config().hang_timeout_s() > 0 ? std::chrono::seconds(a.config().hang_timeout_s())
                                                   : options_.hang_timeout;
  if (const int64_t free = FreeBytes(r.dir); free >= 0 && free < kLowSpace) {
    std::fprintf(stderr, "dfc-worker: --work-dir '%s' has %lld bytes free: the rank's log, reports and error line may "
                 "be lost\n", options_.work_dir.c_str(), static_cast<long long>(free));
  }
  const std::string log_path = (fs::path(r.dir) / "log").string();
  // The rendezvous key goes to the rank in its environment, not in the
  // assignment on its command line.
  v1::RankAssignment on_command_line = r.assignment;
  on_command_line.clear_rendezvous_key();
  const std::string encoded = absl::Base64Escape(on_command_line.SerializeAsString());
  // The rank reads users' data and weights with libjpeg, libpng and libhdf5,
  // so it gets no credential of the coordinator's (no token, no TLS key, not
  // even the address): rank 0 appends its reports to DIR/reports and this
  // worker forwards them (ForwardReports).
  std::vector<std::string> args = {options_.rank_binary, "rank", "--assignment", encoded, "--sandbox",
                                   options_.confine_ranks && r.gpu < 0 ? "on" : "off", "--cpu-share",
                                   std::to_string(cpus_per_rank_)};
  // A rank never outlives its worker (die_with_parent): if the worker dies,
  // so do its ranks, and their peers' collectives fail instead of waiting.
  // Its output is kept per job and rank (DIR/log).
  SubprocessOptions so;
  so.argv = std::move(args);
  so.log_path = log_path;
  so.env.push_back("DFC_RANK_DIR=" + r.dir);
  if (!a.rendezvous_key().empty()) so.env.push_back(absl::StrCat(kRendezvousKeyEnv, "=", a.rendezvous_key()));
  // A CPU slot's rank sees no GPU (else a CUDA build would train it on GPU 0
  // beside that GPU's own rank, and pick NCCL).
  so.env.push_back("CUDA_VISIBLE_DEVICES=" + RankCudaDevices(r.gpu, std::getenv("CUDA_VISIBLE_DEVICES")));
  // Not on the CPU instead (a CUDA build's rank would train there, or pick
  // Gloo beside NCCL peers), nor beside another rank on its GPU.
  absl::StatusOr<Subprocess> started = absl::ResourceExhaustedError(absl::StrCat(
      "no free GPU on this worker: its ", options_.gpus, " are held by ", no_gpu, "; the rank was not started"));
  if (options_.gpus == 0 || r.gpu >= 0) started = Subprocess::Start(so);
  if (started.ok()) {
    r.process = std::move(*started);
    std::fprintf(stderr, "dfc-worker: started %s attempt %d rank %d/%d (pid %d)\n", a.job_id().c_str(), a.attempt(),
                 a.rank(), a.world_size(), static_cast<int>(r.process.pid()));
  } else {
    r.exited = true;
    r.exit_code = 127;
    r.error = std::string(started.status().message());
    std::fprintf(stderr, "dfc-worker: %s attempt %d rank %d/%d: %s\n", a.job_id().c_str(), a.attempt(), a.rank(),
                 a.world_size(), r.error.c_str());
  }
  if (options_.metrics != nullptr) options_.metrics->RankStarted();
  ranks_.push_back(std::move(r));
}

v1::LogChunk WorkerAgent::ReadRankLog(const v1::LogRequest& l) const {
  v1::LogChunk chunk;
  chunk.set_request_id(l.request_id());
  const fs::path path = fs::path(options_.work_dir) / l.job_id() / absl::StrCat("attempt-", l.attempt()) /
                        absl::StrCat("rank-", l.rank()) / "log";
  auto f = OpenToRead(path.string());  // the rank's folder is the rank's: the log may have become a FIFO
  struct stat sb;
  if (!f.ok() || ::fstat(::fileno(f->get()), &sb) != 0) {
    chunk.set_error(absl::StrCat("this worker has no log of ", l.job_id(), " attempt ", l.attempt(), " rank ",
                                 l.rank()));
    return chunk;
  }
  const int64_t size = sb.st_size;
  chunk.set_size(size);
  const int64_t offset = std::max<int64_t>(0, l.offset());
  const int64_t want = std::clamp<int64_t>(l.max_bytes(), 1, 256 << 10);
  if (offset >= size) return chunk;
  std::string data(static_cast<size_t>(std::min<int64_t>(want, size - offset)), '\0');
  const ssize_t n = ::pread(::fileno(f->get()), data.data(), data.size(), static_cast<off_t>(offset));
  data.resize(static_cast<size_t>(std::max<ssize_t>(n, 0)));
  chunk.set_data(std::move(data));
  return chunk;
}

void WorkerAgent::StopRanks(const std::string& job_id, int attempt) {
  for (Rank& r : ranks_) {
    if (r.assignment.job_id() != job_id || r.assignment.attempt() > attempt || r.exited) continue;
    r.process.Terminate(options_.kill_grace);  // a repeated stop never moves the SIGKILL later
    r.stopping = true;
  }
}

void WorkerAgent::ForgetJob(const std::string& job_id) {
  if (!IsPlainName(job_id)) return;
  for (const Rank& r : ranks_) {
    if (r.assignment.job_id() == job_id) {
      forget_.insert(job_id);
      return;
    }
  }
  forget_.erase(job_id);
  std::error_code ec;
  const fs::path dir = fs::path(options_.work_dir) / job_id;
  if (!fs::exists(fs::symlink_status(dir, ec))) return;
  fs::remove_all(dir, ec);
  if (ec) {
    std::fprintf(stderr, "dfc-worker: deleted job %s: its rank folders '%s' could not all be removed: %s\n",
                 job_id.c_str(), dir.c_str(), ec.message().c_str());
  } else {
    std::fprintf(stderr, "dfc-worker: deleted job %s: removed its rank folders\n", job_id.c_str());
  }
}

std::string ReportsPath(const std::string& rank_dir) { return (fs::path(rank_dir) / "reports").string(); }

std::string WorkerAgent::ExitResult(const Rank& r) {
  if (r.hung) return "hung";
  if (r.process.term_signal() != 0) return "killed";
  return r.exit_code == 0 ? "succeeded" : "failed";
}

void WorkerAgent::Reap() {
  const auto now = std::chrono::steady_clock::now();
  for (Rank& r : ranks_) {
    if (r.exited) continue;
    if (r.process.Poll()) {  // also sends the SIGKILL of a stop whose grace period is over
      r.exited = true;
      r.exited_at = now;
      r.exit_code = r.process.exit_code();
      // The rank wrote it: at most 1000 bytes of its first line are kept.
      if (r.error.empty()) r.error = ReadFirstLine((fs::path(r.dir) / "error").string(), 1000).value_or("");
      if (r.error.empty() && r.process.term_signal() != 0) {
        r.error = absl::StrCat("killed by signal ", r.process.term_signal(), " (", strsignal(r.process.term_signal()), ")");
      }
      // A failed rank writes its error line in its folder: none, and no
      // space there, is the operator's to know.
      if (const int64_t free = r.error.empty() && r.exit_code != 0 ? FreeBytes(r.dir) : -1; free >= 0 && free < kNoSpace) {
        r.error = absl::StrCat("exited with status ", r.exit_code, "; its error line could not be kept: this worker's "
                               "--work-dir '", options_.work_dir, "' is full (", free, " bytes free); free space there");
      }
      if (options_.metrics != nullptr) options_.metrics->RankExited(ExitResult(r));
      continue;
    }
    if (r.stopping) continue;
    // Hang detection: no step since the later of its start and its last
    // touch of DIR/progress. SIGKILL ends a stopped (SIGSTOP) process too.
    auto last = r.started;
    struct stat sb;
    if (::stat((fs::path(r.dir) / "progress").c_str(), &sb) == 0) {
      const auto age = std::chrono::system_clock::now() -
                       std::chrono::system_clock::time_point(std::chrono::seconds(sb.st_mtim.tv_sec) +
                                                             std::chrono::nanoseconds(sb.st_mtim.tv_nsec));
      last = std::max(last, now - std::chrono::duration_cast<std::chrono::steady_clock::duration>(age));
    }
    if (now - last > r.hang_timeout) {
      r.error = absl::StrCat("no step progress for ", r.hang_timeout.count(),
                             " s (hang timeout): the rank was declared hung and killed");
      std::fprintf(stderr, "dfc-worker: %s attempt %d rank %d: %s\n", r.assignment.job_id().c_str(),
                   r.assignment.attempt(), r.assignment.rank(), r.error.c_str());
      r.process.Terminate(std::chrono::milliseconds(0));  // SIGKILL
      r.stopping = true;
      r.hung = true;
    }
  }
}

bool WorkerAgent::ForwardRecords(v1::WorkerService::Stub& stub, Rank& r, const std::vector<FileRecord>& records) {
  const int64_t base = r.reports_offset;  // where the records' bytes start in the file
  // Only the newest step progress matters; epochs and settings all do.
  size_t last_progress = records.size();
  std::vector<v1::ReportMetricsRequest> parsed(records.size());
  std::vector<bool> valid(records.size());
  for (size_t i = 0; i < records.size(); ++i) {
    valid[i] = parsed[i].ParseFromString(records[i].payload);
    if (valid[i] && parsed[i].has_progress()) last_progress = i;
  }
  for (size_t i = 0; i < records.size(); ++i) {
    v1::ReportMetricsRequest& req = parsed[i];
    const bool superseded = req.has_progress() && !req.has_epoch() && i != last_progress;
    if (valid[i] && !superseded) {
      // A rank reports for its own attempt, whatever it wrote.
      req.set_job_id(r.assignment.job_id());
      req.set_attempt(r.assignment.attempt());
      v1::ReportMetricsResponse resp;
      auto ctx = MakeContext(options_.security, std::chrono::milliseconds(5000));
      const grpc::Status st = stub.ReportMetrics(ctx.get(), req, &resp);
      // Unreachable, or it cannot write the report now (its state disk is
      // full): sent again next time from here.
      if (st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
          st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
        return false;
      }
      if (!st.ok()) {
        std::fprintf(stderr, "dfc-worker: %s attempt %d: a report was refused: %s\n", r.assignment.job_id().c_str(),
                     r.assignment.attempt(), st.error_message().c_str());
      }
    }
    r.reports_offset = base + static_cast<int64_t>(records[i].end);
  }
  return true;
}

void WorkerAgent::ForwardReports(v1::WorkerService::Stub& stub) {
  constexpr size_t kMaxRead = size_t{1} << 20;
  constexpr int kMaxReadsPerCall = 16;  // a rank that wrote gigabytes is forwarded over many calls
  constexpr size_t kMaxRecord = size_t{64} << 10;
  for (Rank& r : ranks_) {
    r.reports_pending = false;
    if (r.reports_broken) continue;
    auto file = OpenToRead(ReportsPath(r.dir));
    if (!file.ok()) {
      if (absl::IsInvalidArgument(file.status())) {  // not a regular file: the rank is not ours to trust
        std::fprintf(stderr, "dfc-worker: %s attempt %d: no more reports are forwarded: %s\n",
                     r.assignment.job_id().c_str(), r.assignment.attempt(),
                     std::string(file.status().message()).c_str());
        r.reports_broken = true;
      }
      continue;  // otherwise nothing reported yet
    }
    const int fd = ::fileno(file->get());
    for (int read = 0; read < kMaxReadsPerCall; ++read) {
      std::string bytes(kMaxRead, '\0');
      const ssize_t n = ::pread(fd, bytes.data(), bytes.size(), static_cast<off_t>(r.reports_offset));
      if (n <= 0) break;
      bytes.resize(static_cast<size_t>(n));
      auto records = DecodeRecords(bytes, kMaxRecord);
      if (!records.ok()) {
        // Written by a rank that is not ours to trust: its reports end here
        // (the job's outcome still comes from its exit, its epochs from the
        // run directory).
        std::fprintf(stderr, "dfc-worker: %s attempt %d: its reports are damaged (%s); no more are forwarded\n",
                     r.assignment.job_id().c_str(), r.assignment.attempt(),
                     std::string(records.status().message()).c_str());
        r.reports_broken = true;
        break;
      }
      if (!ForwardRecords(stub, r, *records)) {
        r.reports_pending = true;
        break;
      }
      if (static_cast<size_t>(n) < kMaxRead) break;  // read to the end
      // A full read: more may follow (the next read, or the next call's).
      r.reports_pending = read + 1 == kMaxReadsPerCall;
    }
  }
}

int WorkerAgent::Leave(v1::WorkerService::Stub& stub) {
  int running = 0;
  for (const Rank& r : ranks_) running += !r.exited;
  if (running == 0 || worker_id_.empty()) return 0;
  v1::HeartbeatRequest req;
  req.set_worker_id(worker_id_);
  req.set_leaving(true);
  req.set_stop_grace_ms(options_.kill_grace.count());
  AddRankStatuses(req.mutable_ranks());
  v1::HeartbeatResponse resp;
  auto ctx = MakeContext(options_.security, std::chrono::milliseconds(5000));
  absl::Status st = FromGrpc(stub.Heartbeat(ctx.get(), req, &resp));
  if (st.ok() && resp.reregister()) st = absl::UnavailableError("it restarted and does not know this worker yet");
  if (st.ok()) {
    std::fprintf(stderr, "dfc-worker: shutting down: the coordinator put the jobs of its %d running rank(s) back in "
                 "the queue; stopping them\n", running);
  } else {
    std::fprintf(stderr, "dfc-worker: shutting down: could not tell the coordinator (%s); stopping %d rank(s), "
                 "their jobs restart or fail as for a lost worker\n", std::string(st.message()).c_str(), running);
  }
  return running;
}

void WorkerAgent::Left(v1::WorkerService::Stub& stub) {
  v1::HeartbeatRequest req;
  req.set_worker_id(worker_id_);
  req.set_leaving(true);
  req.set_ranks_stopped(true);  // no rank statuses: their exits are the leave's, not failures
  v1::HeartbeatResponse resp;
  auto ctx = MakeContext(options_.security, std::chrono::milliseconds(2000));
  const absl::Status st = FromGrpc(stub.Heartbeat(ctx.get(), req, &resp));
  if (st.ok()) {
    std::fprintf(stderr, "dfc-worker: its ranks have stopped; told the coordinator, so their jobs need not wait "
                 "out the stop grace\n");
  } else {
    std::fprintf(stderr, "dfc-worker: its ranks have stopped; could not tell the coordinator (%s): their jobs wait "
                 "out the stop grace\n", std::string(st.message()).c_str());
  }
}

bool WorkerAgent::Held(const Rank& r, std::chrono::steady_clock::time_point now) {
  return r.exited && r.reports_pending && now - r.exited_at < kReportsGrace;
}

void WorkerAgent::AddRankStatuses(google::protobuf::RepeatedPtrField<v1::RankStatus>* out,
                                  std::chrono::steady_clock::time_point now) const {
  for (const Rank& r : ranks_) {
    const bool exited = r.exited && !Held(r, now);
    v1::RankStatus* s = out->Add();
    s->set_job_id(r.assignment.job_id());
    s->set_attempt(r.assignment.attempt());
    s->set_rank(r.assignment.rank());
    s->set_running(!exited);
    s->set_exited(exited);
    if (exited) s->set_exit_code(r.exit_code);
    s->set_store_port(r.store_port);
    // The rank's error line may quote file names or a weights file's layer
    // names in any encoding; a non-UTF-8 string would make the coordinator
    // refuse the whole heartbeat (and take this worker for dead).
    if (exited) s->set_error(ValidUtf8(r.error));
  }
}

absl::Status WorkerAgent::Run(const std::atomic<bool>* stop) {
  if (options_.work_dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    options_.work_dir = (fs::path(tmp != nullptr && *tmp ? tmp : "/tmp") / absl::StrCat("dfc-worker-", ::getpid())).string();
  }
  std::error_code ec;
  fs::create_directories(options_.work_dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("--work-dir: cannot create '", options_.work_dir, "': ", ec.message()));
  DFC_ASSIGN_OR_RETURN(lock_fd_, LockDirectory(options_.work_dir, "worker.lock", "--work-dir", "dfc-worker",
                                               "two workers on one work directory would remove each other's rank "
                                               "folders and take one worker id"));
  if (auto id = ReadFirstLine((fs::path(options_.work_dir) / kWorkerIdFile).string(), 256); id.ok() && IsPlainName(*id)) {
    previous_id_ = *id;
  }
  auto channel = MakeChannel(options_.coordinator, options_.security);
  if (!channel.ok()) return channel.status();
  auto stub = v1::WorkerService::NewStub(*channel);
  // Keep trying: the coordinator may start after the worker, or restart.
  while (!*stop) {
    absl::Status st = Register(*stub);
    if (st.ok()) break;
    std::fprintf(stderr, "dfc-worker: cannot register with %s: %s (retrying)\n", options_.coordinator.c_str(),
                 std::string(st.message()).c_str());
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  std::string heartbeat_error;
  while (!*stop) {
    Reap();
    // Before the heartbeat: a rank that has exited has its last epoch's
    // report forwarded before its exit is.
    ForwardReports(*stub);
    v1::HeartbeatRequest req;
    req.set_worker_id(worker_id_);
    const auto now = std::chrono::steady_clock::now();
    AddRankStatuses(req.mutable_ranks(), now);
    for (v1::LogChunk& chunk : log_answers_) *req.add_logs() = std::move(chunk);
    log_answers_.clear();
    v1::HeartbeatResponse resp;
    auto ctx = MakeContext(options_.security, std::chrono::milliseconds(5000));
    const auto sent = std::chrono::steady_clock::now();
    absl::Status st = FromGrpc(stub->Heartbeat(ctx.get(), req, &resp));
    if (options_.metrics != nullptr) {
      options_.metrics->Heartbeat(st.ok(), std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count());
    }
    // Logged when heartbeats start failing, or fail otherwise, and when they
    // go through again; not each one.
    if (!st.ok() && st.ToString() != heartbeat_error) {
      std::fprintf(stderr, "dfc-worker: the coordinator did not take a heartbeat: %s (sent again every %lld ms)\n",
                   std::string(st.message()).c_str(), static_cast<long long>(interval_.count()));
    } else if (st.ok() && !heartbeat_error.empty()) {
      std::fprintf(stderr, "dfc-worker: the coordinator takes heartbeats again\n");
    }
    heartbeat_error = st.ok() ? "" : st.ToString();
    if (st.ok() && resp.reregister()) {
      // The coordinator does not know this worker (it restarted): it took
      // nothing of this heartbeat, so exited ranks are kept, and every rank
      // goes with the registration.
      (void)Register(*stub);
    } else if (st.ok()) {
      // Exited ranks were reported; forget them, and their reports (forwarded,
      // or given up after kReportsGrace): a rank's folder keeps its log alone.
      std::vector<Rank> keep;
      for (Rank& r : ranks_) {
        if (!r.exited || Held(r, now)) {
          keep.push_back(std::move(r));
        } else {
          ::unlink(ReportsPath(r.dir).c_str());  // the link itself, should the rank have made it one
        }
      }
      ranks_ = std::move(keep);
      for (const v1::StopRanks& stop : resp.stop()) StopRanks(stop.job_id(), stop.attempt());
      for (const std::string& job : std::set<std::string>(forget_)) ForgetJob(job);  // those that waited
      for (const std::string& job : resp.forget_jobs()) ForgetJob(job);
      for (const v1::RankAssignment& a : resp.start()) StartRank(a);
      for (const v1::LogRequest& l : resp.logs()) log_answers_.push_back(ReadRankLog(l));
    }
    if (options_.metrics != nullptr) {
      int running = 0;
      for (const Rank& r : ranks_) running += !r.exited;
      options_.metrics->SetRanksRunning(running);
    }
    std::this_thread::sleep_for(interval_);
  }
  const int left = Leave(*stub);
  for (Rank& r : ranks_) r.process.Terminate(options_.kill_grace);
  for (Rank& r : ranks_) r.process.Wait();
  if (left > 0) Left(*stub);
  return absl::OkStatus();
}

namespace {

// Rank 0's epoch metrics, progress and resolved hyper-parameters, appended
// to DIR/reports for its worker to forward: the rank holds no credential of
// the coordinator's.
class ReportingObserver : public TrainObserver {
 public:
  ReportingObserver(int fd, std::string job_id, int attempt) : fd_(fd), job_id_(std::move(job_id)), attempt_(attempt) {}
  void OnEpoch(const EpochMetrics& m) override {
    v1::ReportMetricsRequest req;
    req.set_job_id(job_id_);
    req.set_attempt(attempt_);
    v1::EpochMetrics* e = req.mutable_epoch();
    e->set_phase(m.phase);
    e->set_epoch(m.epoch);
    e->set_loss(m.loss);
    e->set_accuracy(m.accuracy);
    e->set_val_loss(m.val_loss);
    e->set_val_accuracy(m.val_accuracy);
    e->set_val_auc(m.val_auc);
    e->set_images_per_second(m.images_per_second);
    e->set_step_data_seconds(m.step_data_seconds);
    e->set_step_compute_seconds(m.step_compute_seconds);
    e->set_step_allreduce_wait_seconds(m.step_allreduce_wait_seconds);
    e->set_lr(m.lr);
    Send(req);
  }
  void OnPhase(const std::string& description) override {
    static constexpr char kPrefix[] = "hyper-parameters: ";
    if (description.rfind(kPrefix, 0) != 0) return;
    v1::ReportMetricsRequest req;
    req.set_job_id(job_id_);
    req.set_attempt(attempt_);
    req.set_resolved_config(description.substr(sizeof(kPrefix) - 1));
    Send(req);
  }
  void OnEpochStart(const std::string& phase, int epoch, int max_epochs, int64_t steps) override {
    phase_ = phase;
    max_epochs_ = max_epochs;
  }
  void OnStep(int epoch, int64_t step, int64_t steps, double loss, double accuracy) override {
    const auto now = std::chrono::steady_clock::now();
    if (step != steps && now - last_progress_ < std::chrono::seconds(1)) return;
    last_progress_ = now;
    v1::ReportMetricsRequest req;
    req.set_job_id(job_id_);
    req.set_attempt(attempt_);
    v1::StepProgress* p = req.mutable_progress();
    p->set_phase(phase_);
    p->set_epochs(max_epochs_);
    p->set_epoch(epoch);
    p->set_step(step);
    p->set_steps(steps);
    p->set_loss(loss);
    p->set_accuracy(accuracy);
    Send(req);
  }

 private:
  void Send(const v1::ReportMetricsRequest& req) {
    absl::Status st = AppendRecord(fd_, req.SerializeAsString());
    if (!st.ok()) std::fprintf(stderr, "dfc-worker rank: cannot report metrics: %s\n", std::string(st.message()).c_str());
  }

  const int fd_;
  const std::string job_id_;
  const int attempt_;
  std::chrono::steady_clock::time_point last_progress_;
  std::string phase_;
  int max_epochs_ = 0;
};

}  // namespace

// Every rank's own account on its stdout (the worker keeps it per job and
// rank; `dfc logs` reads it), passing events on to rank 0's reporter.
class LoggingObserver : public TrainObserver {
 public:
  LoggingObserver(int rank, TrainObserver* next) : rank_(rank), next_(next) {}
  void OnPhase(const std::string& description) override {
    std::printf("rank %d: %s\n", rank_, description.c_str());
    std::fflush(stdout);
    if (next_) next_->OnPhase(description);
  }
  void OnEpochStart(const std::string& phase, int epoch, int max_epochs, int64_t steps) override {
    std::printf("rank %d: %s%sepoch %d/%d: %lld steps\n", rank_, phase.c_str(), phase.empty() ? "" : " ", epoch,
                max_epochs, static_cast<long long>(steps));
    std::fflush(stdout);
    if (next_) next_->OnEpochStart(phase, epoch, max_epochs, steps);
  }
  void OnStep(int epoch, int64_t step, int64_t steps, double loss, double accuracy) override {
    if (next_) next_->OnStep(epoch, step, steps, loss, accuracy);
  }
  void OnEpoch(const EpochMetrics& m) override {
    std::printf("rank %d: %s%sepoch %d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  val_auc %.4f  %.1f img/s\n",
                rank_, m.phase.c_str(), m.phase.empty() ? "" : " ", m.epoch, m.loss, m.accuracy, m.val_loss,
                m.val_accuracy, m.val_auc, m.images_per_second);
    std::fflush(stdout);
    if (next_) next_->OnEpoch(m);
  }

 private:
  const int rank_;
  TrainObserver* const next_;
};

absl::Status RunRank(const v1::RankAssignment& a, int cpus) {
  std::printf("rank %d of %d: job %s attempt %d: %s on %s%s\n", a.rank(), a.world_size(), a.job_id().c_str(),
              a.attempt(), ModelName(a.config().model()).c_str(), a.config().data().c_str(),
              a.resume() ? " (resuming)" : "");
  std::fflush(stdout);
  TrainOptions o = TrainOptionsFromConfig(a.config());
  o.out_dir = a.output_dir();
  o.resume = a.resume();
  o.cpus = cpus;
  // Sign of life for the worker's hang detection: the progress file's mtime.
  int progress_fd = -1;
  if (const char* dir = std::getenv("DFC_RANK_DIR"); dir != nullptr && *dir) {
    progress_fd = ::open((fs::path(dir) / "progress").c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  }
  if (progress_fd >= 0) o.progress = [progress_fd] { ::futimens(progress_fd, nullptr); };
  o.may_write = [dir = a.output_dir(), attempt = a.attempt()] { return run_dir::CheckOwnedBy(dir, attempt); };
  o.run_holder = absl::StrCat("job ", a.job_id(), " attempt ", a.attempt(), " (its rank 0)");
  o.run_lock_shared = true;  // attempts of the job are fenced by OUT/attempt
  std::unique_ptr<Collective> collective;
  if (a.world_size() > 1) {
    CollectiveOptions co;
    co.rank = a.rank();
    co.world_size = a.world_size();
    co.store_host = a.store_host();
    co.store_port = a.store_port();
    co.rendezvous_key = RendezvousKeyFromEnvironment();
    // One GPU per rank (the worker sets CUDA_VISIBLE_DEVICES): NCCL there,
    // Gloo on CPU.
    co.backend = torch::cuda::is_available() ? "nccl" : "gloo";
    auto c = Collective::Connect(co);
    if (!c.ok()) return c.status();
    collective = std::move(*c);
    o.collective = collective.get();
  }
  std::unique_ptr<ReportingObserver> observer;
  int reports_fd = -1;
  if (const char* dir = std::getenv("DFC_RANK_DIR"); a.rank() == 0 && dir != nullptr && *dir) {
    reports_fd = ::open(ReportsPath(dir).c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (reports_fd < 0) {
      return absl::InternalError(absl::StrCat("cannot open ", ReportsPath(dir), ": ", std::strerror(errno)));
    }
    observer = std::make_unique<ReportingObserver>(reports_fd, a.job_id(), a.attempt());
  }
  LoggingObserver logging(a.rank(), observer.get());
  // Stopped by its worker (SIGTERM: the job cancelled or moved, the worker
  // shutting down): the ranks finish the step they are in, agree, and rank
  // 0 saves it for the next attempt (interrupted.ckpt) before they exit.
  CatchStopSignals({SIGTERM}, absl::StrCat("rank ", a.rank()));
  o.stop_requested = [] { return StopSignal() != 0; };
  auto result = RunTraining(o, &logging);
  if (progress_fd >= 0) ::close(progress_fd);
  if (reports_fd >= 0) ::close(reports_fd);
  if (result.status().code() == absl::StatusCode::kCancelled && StopSignal() != 0) {
    return absl::CancelledError(absl::StrCat("stopped by ", StopSignalName(), ": ", result.status().message()));
  }
  return result.status();
}

std::string RankCudaDevices(int gpu, const char* worker_visible) {
  if (gpu < 0) return "";
  if (worker_visible != nullptr && *worker_visible != '\0') {
    const std::vector<std::string> ids = absl::StrSplit(worker_visible, ',');
    if (static_cast<size_t>(gpu) < ids.size()) return std::string(absl::StripAsciiWhitespace(ids[gpu]));
  }
  return std::to_string(gpu);
}

SandboxPolicy RankSandboxPolicy(const v1::RankAssignment& a, const std::string& rank_dir) {
  SandboxPolicy p;
  // Measured with strace on two Gloo ranks: LibTorch, OpenMP and OpenCV
  // size their pools from /proc and /sys (CPUs, NUMA nodes, cgroup quota),
  // Gloo reads the network card's PCI class under /sys, and glibc reads the
  // loader's cache, its name-service files and the user database.
  p.read_paths = {"/usr", "/lib", "/lib64", "/lib32", "/proc/self", "/proc/cpuinfo", "/proc/stat",
                  "/proc/meminfo", "/proc/filesystems", "/sys", "/dev/urandom", "/etc/ld.so.cache",
                  "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/hosts", "/etc/host.conf",
                  "/etc/resolv.conf", "/etc/gai.conf", "/etc/services", "/etc/protocols", "/etc/localtime",
                  a.config().data()};
  if (!a.config().init().empty()) p.read_paths.push_back(a.config().init());
  p.write_dirs = {"/dev/null", a.output_dir()};
  if (!rank_dir.empty()) p.write_dirs.push_back(rank_dir);
  p.allow_network = true;
  return p;
}

int ReportRankFailure(const absl::Status& error) {
  std::string msg(error.message());
  if (const size_t nl = msg.find('\n'); nl != std::string::npos) msg.resize(nl);
  if (const char* dir = std::getenv("DFC_RANK_DIR"); dir != nullptr && *dir) {
    std::ofstream f(fs::path(dir) / "error", std::ios::trunc);
    f << msg << "\n";
  }
  return IsPermanentError(error) ? kRankExitPermanent : kRankExitTransient;
}

}  // namespace dfc
