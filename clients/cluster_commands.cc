// The cluster commands: submit, list, status, watch, cancel (gRPC clients of
// the coordinator) and `cluster up/down` (a local cluster on loopback).
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "clients/client_rpc.h"
#include "clients/commands.h"
#include "clients/training_flags.h"
#include "common/atomic_file.h"
#include "common/cpus.h"
#include "common/progress.h"
#include "common/status_macros.h"
#include "common/subprocess.h"
#include "common/training_config.h"
#include "common/utf8.h"
#include "common/rpc/rpc_util.h"
#include "dfc/v1/dfc.grpc.pb.h"

namespace dfc {
namespace fs = std::filesystem;
namespace {

absl::StatusOr<std::unique_ptr<v1::JobService::Stub>> Connect(ClientArgs& c) {
  auto channel = OpenChannel(c);
  if (!channel.ok()) return channel.status();
  return v1::JobService::NewStub(*channel);
}

// Text a job or worker carries is printed through ForTerminal: a failure
// reason quotes the paths another user chose, and reaches whoever runs
// `dfc status` or `dfc list` (--json prints it exactly, JSON-escaped).

// One timeline entry: local time, what, details.
std::string EventLine(const v1::TimelineEvent& e) {
  const std::time_t t = static_cast<std::time_t>(e.unix_ms() / 1000);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  char when[32];
  std::strftime(when, sizeof(when), "%H:%M:%S", &tm);
  return absl::StrFormat("  %s  %-12s %s", when, ForTerminal(e.kind()), ForTerminal(e.message()));
}

void PrintJob(const v1::Job& j) {
  std::printf("job %s  %s  model %s  world %d  restarts %d/%d\n", ForTerminal(j.job_id()).c_str(),
              v1::JobState_Name(j.state()).c_str(), ModelName(j.config().model()).c_str(), j.world_size(), j.restarts(),
              j.max_restarts());
  if (!j.reason().empty()) std::printf("reason: %s\n", ForTerminal(j.reason()).c_str());
  if (j.has_waiting()) {
    std::printf("waiting: position %d in the queue: %s\n", j.waiting().position(),
                ForTerminal(j.waiting().reason()).c_str());
  }
  for (const auto& f : j.failures()) {
    std::printf("attempt %d failed%s: %s\n", f.attempt(), f.permanent() ? " (permanent)" : "",
                ForTerminal(f.reason()).c_str());
  }
  std::printf("output: %s\n", ForTerminal(j.output_dir()).c_str());
  if (!j.resolved_config().empty()) std::printf("hyper-parameters: %s\n", ForTerminal(j.resolved_config()).c_str());
  for (const auto& e : j.events()) std::printf("%s\n", EventLine(e).c_str());
  auto print_epoch = [](const char* prefix, const v1::EpochMetrics& e) {
    std::printf("%sepoch %d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  val_auc %.4f  %.1f img/s  "
                "step: data %.3fs compute %.3fs all-reduce wait %.3fs\n",
                prefix, e.epoch(), e.loss(), e.accuracy(), e.val_loss(), e.val_accuracy(), e.val_auc(),
                e.images_per_second(), e.step_data_seconds(), e.step_compute_seconds(), e.step_allreduce_wait_seconds());
  };
  // --recipe notebook: the epoch-count selection, then the retraining.
  for (const auto& e : j.selection_epochs()) print_epoch("selection ", e);
  for (const auto& e : j.epochs()) print_epoch("", e);
}

int ExitForState(v1::JobState s) {
  if (s == v1::SUCCEEDED) return kExitOk;
  return kExitJobFailed;
}

struct SubmitArgs {
  v1::SubmitJobRequest req;
};

int RunSubmit(ClientArgs& c, SubmitArgs& s) {
  auto stub = Connect(c);
  if (!stub.ok()) return ReportError(stub.status());
  // Workers read the data path as given: make it absolute.
  if (!s.req.config().data().empty()) {
    s.req.mutable_config()->set_data(fs::absolute(s.req.config().data()).lexically_normal().string());
  }
  if (!s.req.config().init().empty()) {
    s.req.mutable_config()->set_init(fs::absolute(s.req.config().init()).lexically_normal().string());
  }
  if (absl::Status st = CheckUtf8Strings(s.req); !st.ok()) return ReportError(st);
  v1::SubmitJobResponse resp;
  auto ctx = MakeContext(c.security);
  grpc::Status st = (*stub)->SubmitJob(ctx.get(), s.req, &resp);
  if (!st.ok()) return ReportRpcError(st);
  if (c.json) std::printf("%s\n", ToJson(resp).c_str());
  else std::printf("%s\n", resp.job_id().c_str());
  if (!resp.warning().empty()) std::fprintf(stderr, "dfc: warning: %s\n", ForTerminal(resp.warning()).c_str());
  return kExitOk;
}

int RunList(ClientArgs& c, const std::string& state, int page_size) {
  auto stub = Connect(c);
  if (!stub.ok()) return ReportError(stub.status());
  v1::ListJobsRequest req;
  if (!state.empty()) {
    v1::JobState s;
    if (!v1::JobState_Parse(absl::AsciiStrToUpper(state), &s) || s == v1::JOB_STATE_UNSPECIFIED) {
      return ReportError(absl::InvalidArgumentError(absl::StrCat(
          "--state: unknown state '", state, "' (QUEUED, SCHEDULED, RUNNING, SUCCEEDED, FAILED, CANCELLED)")));
    }
    req.set_state(s);
  }
  req.set_page_size(page_size);
  // Every page, then one listing (the server bounds each page's size).
  v1::ListJobsResponse all;
  for (;;) {
    v1::ListJobsResponse resp;
    auto ctx = MakeContext(c.security);
    grpc::Status st = (*stub)->ListJobs(ctx.get(), req, &resp);
    if (!st.ok()) return ReportRpcError(st);
    for (auto& j : *resp.mutable_jobs()) *all.add_jobs() = std::move(j);
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  if (c.json) {
    std::printf("%s\n", ToJson(all).c_str());
    return kExitOk;
  }
  std::printf("%-18s %-10s %-17s %5s %8s %6s %8s\n", "JOB", "STATE", "MODEL", "WORLD", "RESTARTS", "EPOCHS", "VAL_ACC");
  for (const auto& j : all.jobs()) {
    // A notebook-recipe job still choosing its epoch count: "N sel".
    const std::string epochs = j.epochs_done() == 0 && j.selection_epochs_done() > 0
                                   ? absl::StrCat(j.selection_epochs_done(), " sel")
                                   : absl::StrCat(j.epochs_done());
    std::printf("%-18s %-10s %-17s %5d %8d %6s %8s\n", ForTerminal(j.job_id()).c_str(), v1::JobState_Name(j.state()).c_str(),
                ModelName(j.config().model()).c_str(), j.world_size(), j.restarts(), epochs.c_str(),
                j.epochs_done() ? absl::StrCat(j.last_epoch().val_accuracy()).c_str() : "-");
  }
  return kExitOk;
}

struct LogsArgs {
  std::string job;
  int rank = 0;
  int attempt = 0;
  bool follow = false;
  int tail = 0;
};

// A rank's output as `logs` prints it: raw to a file or a pipe; on a
// terminal line by line through ForTerminal, since a rank prints what its
// job's data made it print (file names included), so no escape sequence in
// it reaches the terminal of whoever reads the log.
class LogPrinter {
 public:
  explicit LogPrinter(bool terminal) : terminal_(terminal) {}
  ~LogPrinter() { Finish(); }
  void Add(std::string_view data) {
    if (!terminal_) {
      std::fwrite(data.data(), 1, data.size(), stdout);
      std::fflush(stdout);
      return;
    }
    pending_.append(data.data(), data.size());
    size_t from = 0;
    for (size_t nl; (nl = pending_.find('\n', from)) != std::string::npos; from = nl + 1) {
      std::printf("%s\n", ForLog(std::string_view(pending_).substr(from, nl - from)).c_str());
    }
    pending_.erase(0, from);
    std::fflush(stdout);
  }
  // The last line, when the log does not end with one.
  void Finish() {
    if (!pending_.empty()) std::printf("%s", ForLog(pending_).c_str());
    pending_.clear();
    std::fflush(stdout);
  }

 private:
  // ForTerminal, tabs kept.
  static std::string ForLog(std::string_view line) {
    std::vector<std::string> parts;
    for (absl::string_view part : absl::StrSplit(absl::string_view(line.data(), line.size()), '\t')) {
      parts.push_back(ForTerminal(std::string_view(part.data(), part.size())));
    }
    return absl::StrJoin(parts, "\t");
  }
  const bool terminal_;
  std::string pending_;
};

// A rank's output through the coordinator, which asks the worker that ran it.
int RunLogs(ClientArgs& c, const LogsArgs& a) {
  auto stub = Connect(c);
  if (!stub.ok()) return ReportError(stub.status());
  // One chunk, through the worker's next heartbeat.
  auto fetch = [&](int64_t offset, int max_bytes, v1::GetRankLogResponse* resp) {
    v1::GetRankLogRequest req;
    req.set_job_id(a.job);
    req.set_rank(a.rank);
    req.set_attempt(a.attempt);
    req.set_offset(offset);
    req.set_max_bytes(max_bytes);
    auto ctx = MakeContext(c.security);
    return (*stub)->GetRankLog(ctx.get(), req, resp);
  };
  LogPrinter out(::isatty(STDOUT_FILENO) != 0);
  int64_t offset = 0;
  if (a.tail > 0) {
    // Only the end is read, from further back each time until it holds the
    // last `tail` lines: a long log is not fetched chunk by chunk from its start.
    v1::GetRankLogResponse resp;
    if (grpc::Status st = fetch(0, 1, &resp); !st.ok()) return ReportRpcError(st);
    const int64_t size = resp.size();
    constexpr int64_t kMaxWindow = int64_t{64} << 20;
    std::vector<absl::string_view> lines;
    std::string text;
    for (int64_t window = 64 << 10;; window *= 4) {
      const int64_t start = std::max<int64_t>(0, size - window);
      text.clear();
      for (int64_t at = start; at < size;) {
        if (grpc::Status st = fetch(at, static_cast<int>(std::min<int64_t>(size - at, 256 << 10)), &resp); !st.ok()) {
          return ReportRpcError(st);
        }
        if (resp.data().empty()) break;  // the log was cut meanwhile
        text += resp.data();
        at += static_cast<int64_t>(resp.data().size());
      }
      lines = absl::StrSplit(text, '\n');
      if (!lines.empty() && lines.back().empty()) lines.pop_back();
      // From inside the log, the first line may be the end of a longer one.
      const bool cut = start > 0;
      if (!cut || lines.size() > static_cast<size_t>(a.tail) || window >= kMaxWindow) break;
    }
    const size_t from = lines.size() > static_cast<size_t>(a.tail) ? lines.size() - static_cast<size_t>(a.tail) : 0;
    for (size_t i = from; i < lines.size(); ++i) out.Add(absl::StrCat(lines[i], "\n"));
    offset = size;
    if (!a.follow) return kExitOk;
  }
  bool said_waiting = false;
  for (;;) {
    v1::GetRankLogResponse resp;
    if (grpc::Status st = fetch(offset, 0, &resp); !st.ok()) {
      // Following, a coordinator that restarts (or whose worker has not
      // registered again yet) is waited for, as `watch` does; the log goes on
      // where it was.
      if (!a.follow || st.error_code() != grpc::StatusCode::UNAVAILABLE) return ReportRpcError(st);
      if (!said_waiting) {
        std::fprintf(stderr, "dfc: the log cannot be read now (%s); waiting\n", ForTerminal(st.error_message()).c_str());
      }
      said_waiting = true;
      std::this_thread::sleep_for(std::chrono::seconds(1));
      continue;
    }
    if (said_waiting) std::fprintf(stderr, "dfc: the log is reachable again\n");
    said_waiting = false;
    offset += static_cast<int64_t>(resp.data().size());
    out.Add(resp.data());
    if (offset < resp.size()) continue;  // more to read now
    if (!a.follow) return kExitOk;
    // Following: until the job has ended and the log is read to its end.
    v1::GetJobRequest jr;
    jr.set_job_id(a.job);
    v1::Job job;
    auto jctx = MakeContext(c.security);
    if (grpc::Status js = (*stub)->GetJob(jctx.get(), jr, &job); js.ok() && IsTerminalState(job.state())) {
      return kExitOk;
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

int RunWorkers(ClientArgs& c) {
  auto stub = Connect(c);
  if (!stub.ok()) return ReportError(stub.status());
  v1::ListWorkersResponse resp;
  auto ctx = MakeContext(c.security);
  grpc::Status st = (*stub)->ListWorkers(ctx.get(), v1::ListWorkersRequest(), &resp);
  if (!st.ok()) return ReportRpcError(st);
  if (c.json) {
    std::printf("%s\n", ToJson(resp).c_str());
    return kExitOk;
  }
  std::printf("%-20s %-22s %-8s %5s %5s %9s  %s\n", "WORKER", "ADDRESS", "STATE", "SLOTS", "FREE", "HEARTBEAT", "RANKS");
  for (const auto& w : resp.workers()) {
    std::string ranks;
    for (const auto& r : w.ranks()) absl::StrAppend(&ranks, ranks.empty() ? "" : " ", r.job_id(), "/", r.rank());
    if (w.stopping_ranks() > 0) absl::StrAppend(&ranks, ranks.empty() ? "" : " ", "(+", w.stopping_ranks(), " stopping)");
    std::printf("%-20s %-22s %-8s %5s %5d %8.1fs  %s\n", ForTerminal(w.worker_id()).c_str(),
                ForTerminal(w.address()).c_str(), ForTerminal(w.state()).c_str(),
                absl::StrCat(w.slots(), w.gpus() > 0 ? "g" : "").c_str(), w.free_slots(), w.seconds_since_heartbeat(),
                ranks.empty() ? "-" : ForTerminal(ranks).c_str());
  }
  return kExitOk;
}

int RunStatus(ClientArgs& c, const std::string& job_id) {
  auto stub = Connect(c);
  if (!stub.ok()) return ReportError(stub.status());
  v1::GetJobRequest req;
  req.set_job_id(job_id);
  v1::Job job;
  auto ctx = MakeContext(c.security);
  grpc::Status st = (*stub)->GetJob(ctx.get(), req, &job);
  if (!st.ok()) return ReportRpcError(st);
  if (c.json) std::printf("%s\n", ToJson(job).c_str());
  else PrintJob(job);
  return kExitOk;
}

int RunCancel(ClientArgs& c, const std::string& job_id) {
  auto stub = Connect(c);
  if (!stub.ok()) return ReportError(stub.status());
  v1::CancelJobRequest req;
  req.set_job_id(job_id);
  v1::CancelJobResponse resp;
  auto ctx = MakeContext(c.security);
  grpc::Status st = (*stub)->CancelJob(ctx.get(), req, &resp);
  if (!st.ok()) return ReportRpcError(st);
  if (c.json) std::printf("%s\n", ToJson(resp.job()).c_str());
  else std::printf("%s %s\n", ForTerminal(job_id).c_str(), v1::JobState_Name(resp.job().state()).c_str());
  return kExitOk;
}

// Each job in turn: one that cannot be deleted is named and the rest go on;
// the exit code is the first failure's.
int RunDelete(ClientArgs& c, const std::vector<std::string>& job_ids, bool outputs) {
  auto stub = Connect(c);
  if (!stub.ok()) return ReportError(stub.status());
  int code = kExitOk;
  for (const std::string& id : job_ids) {
    v1::DeleteJobRequest req;
    req.set_job_id(id);
    req.set_outputs(outputs);
    v1::DeleteJobResponse resp;
    auto ctx = MakeContext(c.security);
    grpc::Status st = (*stub)->DeleteJob(ctx.get(), req, &resp);
    if (!st.ok()) {
      const int failed = ReportRpcError(st);
      if (code == kExitOk) code = failed;
      continue;
    }
    if (resp.removed_outputs().empty()) std::printf("%s deleted\n", ForTerminal(id).c_str());
    else std::printf("%s deleted; removed %s\n", ForTerminal(id).c_str(), ForTerminal(resp.removed_outputs()).c_str());
  }
  return code;
}

int RunWatch(ClientArgs& c, const std::string& job_id, int timeout_s) {
  auto stub = Connect(c);
  if (!stub.ok()) return ReportError(stub.status());
  v1::WatchJobRequest req;
  req.set_job_id(job_id);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  v1::JobEvent ev;
  v1::JobState last_state = v1::JOB_STATE_UNSPECIFIED;
  int printed = 0, selection_printed = 0;  // epochs of the run / of --recipe notebook's selection
  int events_printed = 0;
  std::unique_ptr<ProgressBar> bar;
  std::string bar_key;  // phase and epoch of the bar
  v1::Job job;
  bool said_retrying = false;
  // A coordinator that restarts (or is briefly unreachable) does not end the
  // watch: it reconnects until the timeout.
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    auto ctx = MakeContext(c.security, std::max(left, std::chrono::milliseconds(1)));
    auto reader = (*stub)->WatchJob(ctx.get(), req);
    while (reader->Read(&ev)) {
      said_retrying = false;
      job = ev.job();
      if (events_printed > job.events_size()) events_printed = 0;  // the timeline was trimmed
      for (; events_printed < job.events_size(); ++events_printed) {
        const v1::TimelineEvent& e = job.events(events_printed);
        if (e.kind() == "running" || e.kind() == "succeeded") continue;  // the state line says it
        if (bar) bar->Finish();
        if (c.json) std::printf("%s\n", ToJson(e).c_str());
        else std::printf("%s\n", EventLine(e).c_str());
      }
      if (job.state() != last_state) {
        if (bar) bar->Finish();
        if (c.json) std::printf("{\"state\":\"%s\",\"restarts\":%d}\n", v1::JobState_Name(job.state()).c_str(), job.restarts());
        else std::printf("%s %s%s\n", ForTerminal(job_id).c_str(), v1::JobState_Name(job.state()).c_str(),
                         job.restarts() ? absl::StrCat(" (restart ", job.restarts(), ")").c_str() : "");
        last_state = job.state();
      }
      // The notebook recipe's selection epochs come first (all of them
      // before the retraining starts), then the run's.
      // "epoch N/limit": --epochs, except for the retraining, whose count the
      // selection chose (known from the progress reports).
      auto print_epochs = [&](const auto& epochs, int& done, const char* prefix, bool retraining) {
        int limit = job.config().epochs();
        if (retraining) limit = job.progress().phase().empty() ? job.progress().epochs() : 0;
        for (; done < epochs.size(); ++done) {
          const auto& e = epochs[done];
          if (bar) bar->Finish();
          if (c.json) {
            std::printf("%s\n", ToJson(e).c_str());
          } else {
            std::printf("%sepoch %d%s  loss %.4f  acc %.4f  val_acc %.4f  val_auc %.4f  %.1f img/s\n", prefix,
                        e.epoch(), limit > 0 ? absl::StrCat("/", limit).c_str() : "", e.loss(), e.accuracy(),
                        e.val_accuracy(), e.val_auc(), e.images_per_second());
          }
        }
      };
      const bool notebook = job.config().recipe() == "notebook";
      print_epochs(job.selection_epochs(), selection_printed, "selection ", false);
      print_epochs(job.epochs(), printed, "", notebook);
      std::fflush(stdout);
      const v1::StepProgress& p = job.progress();
      const bool selecting = !p.phase().empty();
      const int done = selecting ? job.selection_epochs_size() : job.epochs_size();
      if (!c.json && job.state() == v1::RUNNING && p.steps() > 0 && p.epoch() > done) {
        const std::string key = absl::StrCat(p.phase(), p.epoch());
        if (!bar || bar_key != key) {
          if (bar) bar->Finish();
          bar = std::make_unique<ProgressBar>(absl::StrCat(selecting ? p.phase() + " " : "", "epoch ", p.epoch(), "/",
                                                           p.epochs() > 0 ? p.epochs() : job.config().epochs()),
                                              p.steps(), stderr);
          bar_key = key;
        }
        bar->Update(p.step(), absl::StrFormat("loss %.4f acc %.4f", p.loss(), p.accuracy()));
      }
    }
    grpc::Status st = reader->Finish();
    if (st.ok()) break;
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE &&
        std::chrono::steady_clock::now() + std::chrono::milliseconds(500) < deadline) {
      if (!said_retrying) std::fprintf(stderr, "dfc: coordinator unavailable (%s); reconnecting\n",
                                       ForTerminal(st.error_message()).c_str());
      said_retrying = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      continue;
    }
    if (bar) bar->Finish();
    return ReportRpcError(st);
  }
  if (bar) bar->Finish();
  if (!c.json) PrintJob(job);
  return ExitForState(job.state());
}

// ---- local cluster ----

struct ClusterArgs {
  std::string listen = "127.0.0.1:50051";
  int workers = 2;
  int cpu_slots = 1;
  int gpus = 0;  // GPU ranks per worker (CUDA builds; -1 = every visible GPU)
  std::string state;
  int wait_s = 60;
  std::string server_listen = "127.0.0.1:0";  // dfc-server (port 0: any free port; clients ask the coordinator)
  int servers = 1;
  std::string http_listen = "127.0.0.1:0";  // the dashboard (port 0: a free port); "" = off
  bool metrics = false;                     // --metrics-listen on every process (free ports)
};

// HOST:0 becomes HOST:<a free port> (cluster up prints where things are).
std::string ConcretePort(const std::string& listen) {
  if (listen.size() < 2 || listen.compare(listen.size() - 2, 2, ":0") != 0) return listen;
  return BoundAddress(listen, PickFreePort());
}

int RunClusterUp(const ClusterArgs& a) {
  if (a.state.empty()) return ReportError(absl::InvalidArgumentError("cluster up: --state is required"));
  // The workers and servers are told the coordinator's address, so port 0
  // becomes a concrete free port here rather than in the coordinator.
  const std::string listen = ConcretePort(a.listen);
  const fs::path state = fs::absolute(a.state);
  std::error_code ec;
  fs::create_directories(state / "logs", ec);
  if (ec) return ReportError(absl::InvalidArgumentError(absl::StrCat("--state: ", ec.message())));
  if (fs::exists(state / "cluster.pids")) {
    return ReportError(absl::AlreadyExistsError(absl::StrCat("a cluster is already up in ", state.string(),
                                                             " (dfc cluster down --state ", a.state, ")")));
  }
  // Daemons: their own session, not killed with this command.
  std::vector<Subprocess> procs;
  auto spawn = [&](std::vector<std::string> argv, const std::string& log) -> absl::Status {
    SubprocessOptions so;
    so.argv = std::move(argv);
    so.log_path = (state / "logs" / log).string();
    so.new_session = true;
    so.die_with_parent = false;
    auto p = Subprocess::Start(so);
    if (!p.ok()) return p.status();
    procs.push_back(std::move(*p));
    return absl::OkStatus();
  };
  std::vector<std::pair<std::string, std::string>> metrics;  // process -> its endpoint
  auto with_metrics = [&](std::vector<std::string>& argv, const std::string& who) {
    if (!a.metrics) return;
    metrics.emplace_back(who, ConcretePort("127.0.0.1:0"));
    argv.insert(argv.end(), {"--metrics-listen", metrics.back().second});
  };
  std::vector<std::string> coordinator = {SiblingExecutable("dfc-coordinator"), "--listen", listen, "--state",
                                          state.string()};
  const std::string http = ConcretePort(a.http_listen);
  if (!http.empty()) coordinator.insert(coordinator.end(), {"--http-listen", http});
  with_metrics(coordinator, "coordinator");
  if (absl::Status st = spawn(coordinator, "coordinator.log"); !st.ok()) return ReportError(st);
  for (int r = 0; r < a.servers; ++r) {
    std::vector<std::string> argv = {SiblingExecutable("dfc-server"), "--coordinator", listen, "--listen",
                                     a.server_listen, "--models-dir", (state / "models").string()};
    if (a.gpus == 0) argv.insert(argv.end(), {"--device", "cpu"});
    with_metrics(argv, absl::StrCat("server-", r));
    if (absl::Status st = spawn(argv, absl::StrCat("server-", r, ".log")); !st.ok()) return ReportError(st);
  }
  // The workers share this machine's CPUs: each sizes its ranks' threads by
  // its part, not by all of them.
  const int cpus_per_worker = CpuShare(UsableCpus(), a.workers);
  for (int w = 0; w < a.workers; ++w) {
    std::vector<std::string> argv = {SiblingExecutable("dfc-worker"), "--coordinator", listen, "--cpu-slots",
                                     std::to_string(a.cpu_slots), "--cpus", std::to_string(cpus_per_worker),
                                     "--work-dir", (state / absl::StrCat("workers/worker-", w)).string()};
    if (a.gpus != 0) argv.insert(argv.end(), {"--gpus", std::to_string(a.gpus)});
    with_metrics(argv, absl::StrCat("worker-", w));
    if (absl::Status st = spawn(argv, absl::StrCat("worker-", w, ".log")); !st.ok()) return ReportError(st);
  }
  // Each pid with its start time: `cluster down` signals only processes that
  // are still the ones started here (a pid may be reused after they exit).
  // The coordinator's line is the first: `cluster down` stops it last.
  std::string pid_text;
  for (const Subprocess& p : procs) pid_text += absl::StrCat(p.pid(), " ", ProcessStartTime(p.pid()), "\n");
  if (absl::Status st = WriteFileAtomically((state / "cluster.pids").string(), pid_text); !st.ok()) return ReportError(st);
  // Ready when the coordinator lists every worker as live and every
  // evaluation server as announced.
  ClientArgs client;
  client.coordinator = listen;
  auto channel = OpenChannel(client);
  if (!channel.ok()) return ReportError(channel.status());
  auto stub = v1::JobService::NewStub(*channel);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(a.wait_s);
  // The coordinator that answers must be this one: its log says it listens
  // on `listen` for `state`. (Another one on that port answered before, and
  // this cluster's workers registered with it, while its own had exited.)
  const std::string coordinator_log = (state / "logs/coordinator.log").string();
  const std::string own_line = absl::StrCat("dfc-coordinator listening on ", listen, " (state ", state.string(), ")");
  bool own_coordinator = false;
  while (std::chrono::steady_clock::now() < deadline) {
    if (procs[0].Poll()) {
      // Its own last word (gRPC's log lines come before it) says why.
      std::string why;
      if (auto text = ReadFile(coordinator_log, 1 << 20); text.ok()) {
        for (absl::string_view line : absl::StrSplit(*text, '\n')) {
          if (absl::ConsumePrefix(&line, "dfc-coordinator: ")) why = std::string(line);
        }
      }
      procs.clear();  // the workers and servers started for it stop
      fs::remove(state / "cluster.pids", ec);
      return ReportError(absl::UnavailableError(
          absl::StrCat("the coordinator exited", why.empty() ? "" : ": ", why, " (its log: ", coordinator_log, ")")));
    }
    if (!own_coordinator) {
      auto text = ReadFile(coordinator_log, 1 << 20);
      own_coordinator = text.ok() && text->find(own_line) != std::string::npos;
      if (!own_coordinator) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
    }
    v1::ListServersResponse servers;
    v1::ListWorkersResponse workers;
    {
      auto ctx = MakeContext(client.security, std::chrono::seconds(2));
      if (!stub->ListServers(ctx.get(), v1::ListServersRequest(), &servers).ok()) servers.Clear();
    }
    {
      auto ctx = MakeContext(client.security, std::chrono::seconds(2));
      if (!stub->ListWorkers(ctx.get(), v1::ListWorkersRequest(), &workers).ok()) workers.Clear();
    }
    const int live = static_cast<int>(std::count_if(workers.workers().begin(), workers.workers().end(),
                                                    [](const v1::WorkerSummary& w) { return w.state() == "live"; }));
    if (live >= a.workers && servers.addresses_size() >= a.servers) {
      for (Subprocess& p : procs) p.Release();
      const std::string evaluation = servers.addresses().empty()
                                         ? "no evaluation server"
                                         : "evaluation server(s) " + absl::StrJoin(servers.addresses(), ",");
      std::printf("cluster up: coordinator %s, %d worker(s) x %d slot(s), %s, state %s\n", listen.c_str(), a.workers,
                  a.cpu_slots, evaluation.c_str(), state.c_str());
      if (!http.empty()) std::printf("dashboard: http://%s/\n", http.c_str());
      for (const auto& [who, addr] : metrics) std::printf("metrics: %s http://%s/metrics\n", who.c_str(), addr.c_str());
      return kExitOk;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (Subprocess& p : procs) p.Release();  // `cluster down` stops them; their logs say what went wrong
  return ReportError(absl::DeadlineExceededError("cluster up: workers or servers did not register in time; see the logs in " +
                                                 (state / "logs").string()));
}

int RunClusterDown(const ClusterArgs& a) {
  const fs::path pids_file = fs::path(a.state) / "cluster.pids";
  auto text = ReadFile(pids_file.string());
  if (!text.ok()) return ReportError(text.status());
  std::vector<pid_t> pids;  // workers and servers
  pid_t coordinator = 0;    // the first line's
  bool first = true;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    const bool is_coordinator = first;
    first = false;
    std::vector<std::string> f = absl::StrSplit(line, ' ', absl::SkipEmpty());
    int pid = 0;
    unsigned long long start = 0;
    if (f.size() != 2 || !absl::SimpleAtoi(f[0], &pid) || !absl::SimpleAtoi(f[1], &start) || pid <= 1) {
      return ReportError(absl::DataLossError(absl::StrCat(pids_file.string(), ": unreadable line '", line, "'")));
    }
    const unsigned long long now = ProcessStartTime(pid);
    if (now == 0) continue;  // already gone
    if (now != start) {
      std::fprintf(stderr, "cluster down: pid %d is not the process cluster up started (its pid was reused); "
                   "left alone\n", pid);
      continue;
    }
    if (is_coordinator) {
      coordinator = pid;
    } else {
      pids.push_back(pid);
    }
  }
  // SIGTERM, then SIGKILL for what is still there after `seconds`. SIGCONT:
  // a stopped process acts on SIGTERM (a clean shutdown) only once it runs.
  auto stop = [](const std::vector<pid_t>& group, int seconds) {
    for (pid_t p : group) {
      ::kill(p, SIGTERM);
      ::kill(p, SIGCONT);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    for (pid_t p : group) {
      while (::kill(p, 0) == 0 && std::chrono::steady_clock::now() < deadline) {
        ::waitpid(p, nullptr, WNOHANG);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      }
      if (::kill(p, 0) == 0) ::kill(p, SIGKILL);
    }
  };
  // Workers and servers first, while the coordinator still answers: a worker
  // tells it that it is leaving (its jobs go back to the queue, to resume at
  // the next `cluster up`) and stops its ranks (5 s for the call, 3 s for the
  // ranks). The coordinator, the first line of the file, last.
  stop(pids, 15);
  if (coordinator > 0) stop({coordinator}, 10);
  std::error_code ec;
  fs::remove(pids_file, ec);
  std::printf("cluster down: stopped %zu process(es)\n", pids.size() + (coordinator > 0 ? 1 : 0));
  return kExitOk;
}

void AddClientFlags(CLI::App* cmd, ClientArgs* c) {
  cmd->add_flag("--json", c->json, "Machine-readable output");
}

}  // namespace

std::shared_ptr<ClientArgs> AddCoordinatorOptions(CLI::App& app) {
  auto c = std::make_shared<ClientArgs>();
  app.add_option("--coordinator", c->coordinator, "Coordinator address host:port")->envname("DFC_COORDINATOR");
  app.add_option("--tls-ca", c->security.tls_ca, "CA (PEM) to verify the coordinator; enables TLS");
  app.add_option("--tls-cert", c->security.tls_cert, "Client certificate (PEM)");
  app.add_option("--tls-key", c->security.tls_key, "Client key (PEM)");
  app.add_option("--token-file", c->token_file, "File holding the API bearer token");
  return c;
}

int ReportRpcError(const grpc::Status& status) {
  if (status.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) return ReportError(FromGrpc(status));
  return ReportError(absl::UnavailableError(absl::StrCat(status.error_message(), "; try again later")));
}

namespace {
// --token-file's token into c.security, once.
absl::Status LoadToken(ClientArgs& c) {
  if (c.token_file.empty() || !c.security.token.empty()) return absl::OkStatus();
  auto t = BearerToken::FromFile(c.token_file, "--token-file");
  if (!t.ok()) return t.status();
  c.security.token = *t;
  return absl::OkStatus();
}
}  // namespace

absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(ClientArgs& c) {
  DFC_RETURN_IF_ERROR(LoadToken(c));
  return MakeChannel(c.coordinator, c.security);
}

void AddServerOption(CLI::App* cmd, ClientArgs* c) {
  cmd->add_option("--server", c->server,
                  "Evaluation server(s): host:port, dns:///NAME:PORT (every address of the name, round-robin) or "
                  "IP:PORT,IP:PORT (default: the replicas the coordinator lists)")
      ->envname("DFC_SERVER");
}

namespace {
// host:port with the host resolved to an IP literal (a gRPC address list
// takes literals only).
absl::StatusOr<std::string> ResolveHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return absl::InvalidArgumentError(absl::StrCat("'", address, "' is not host:port"));
  const std::string host = address.substr(0, colon);
  if (host.empty() || host[0] == '[') return address;
  addrinfo hints{};
  hints.ai_family = AF_INET;
  addrinfo* res = nullptr;
  if (::getaddrinfo(host.c_str(), nullptr, &hints, &res) != 0 || res == nullptr) {
    return absl::UnavailableError(absl::StrCat("cannot resolve server '", host, "'"));
  }
  char ip[INET_ADDRSTRLEN] = {0};
  ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr, ip, sizeof(ip));
  ::freeaddrinfo(res);
  return absl::StrCat(ip, address.substr(colon));
}
}  // namespace

// --server as given, or the replicas the coordinator lists (resolved to IPs).
absl::StatusOr<std::string> ServerList(ClientArgs& c) {
  DFC_RETURN_IF_ERROR(LoadToken(c));
  if (!c.server.empty()) return c.server;
  auto channel = OpenChannel(c);
  if (!channel.ok()) return channel.status();
  auto stub = v1::JobService::NewStub(*channel);
  auto ctx = MakeContext(c.security);
  v1::ListServersResponse resp;
  if (grpc::Status st = stub->ListServers(ctx.get(), v1::ListServersRequest(), &resp); !st.ok()) {
    return FromGrpc(st);
  }
  if (resp.addresses().empty()) {
    return absl::UnavailableError(absl::StrCat(
        "no evaluation server (dfc-server) has announced itself to the coordinator at ", c.coordinator,
        "; start one (`dfc cluster up` does) or give --server"));
  }
  std::vector<std::string> resolved;
  for (const std::string& a : resp.addresses()) {
    auto r = ResolveHostPort(a);
    if (!r.ok()) return r.status();
    resolved.push_back(*r);
  }
  return absl::StrJoin(resolved, ",");
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenServerChannel(ClientArgs& c) {
  auto servers = ServerList(c);
  if (!servers.ok()) return servers.status();
  auto target = ServerListTarget(*servers);
  if (!target.ok()) return target.status();
  return MakeChannel(*target, c.security, /*round_robin=*/true);
}

absl::StatusOr<std::vector<std::shared_ptr<grpc::Channel>>> OpenServerChannels(ClientArgs& c) {
  auto servers = ServerList(c);
  if (!servers.ok()) return servers.status();
  std::vector<std::shared_ptr<grpc::Channel>> out;
  const bool resolver_target = servers->find(':') != std::string::npos &&
                               (absl::StartsWith(*servers, "dns:") || absl::StartsWith(*servers, "ipv4:") ||
                                absl::StartsWith(*servers, "ipv6:"));
  if (resolver_target || servers->find(',') == std::string::npos) {
    // One address, or a gRPC target (dns:///NAME:PORT, ipv4:A,B): gRPC's
    // round_robin policy over every address it resolves to.
    auto target = ServerListTarget(*servers);
    if (!target.ok()) return target.status();
    auto channel = MakeChannel(*target, c.security, /*round_robin=*/true);
    if (!channel.ok()) return channel.status();
    out.push_back(*channel);
    return out;
  }
  if (auto checked = ServerListTarget(*servers); !checked.ok()) return checked.status();
  for (absl::string_view a : absl::StrSplit(*servers, ',', absl::SkipWhitespace())) {
    auto channel = MakeChannel(std::string(absl::StripAsciiWhitespace(a)), c.security);
    if (!channel.ok()) return channel.status();
    out.push_back(*channel);
  }
  return out;
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

// Long by design: a table of subcommands and their flags (declarations, no
// logic), so that every cluster flag is found in one place.
void AddClusterCommands(CLI::App& app, RunFn* run, std::shared_ptr<ClientArgs> c) {

  auto s = std::make_shared<SubmitArgs>();
  s->req.mutable_config()->set_epochs(10);
  s->req.mutable_config()->set_batch_size(32);
  s->req.mutable_config()->set_seed(1);
  s->req.set_world_size(1);
  CLI::App* submit = app.add_subcommand("submit", "Submit a training job to the coordinator; prints its id");
  auto* cfg = s->req.mutable_config();
  AddTrainingFlags(submit, cfg);  // the flags `dfc train` has, into the same TrainingConfig
  submit->add_flag_function("--wait-for-capacity", [s](int64_t) { s->req.set_wait_for_capacity(true); },
                             "Keep a job with more ranks than the cluster has slots queued until workers join");
  submit->add_option_function<int>("--hang-timeout", [cfg](int v) { cfg->set_hang_timeout_s(v); },
                                   "Seconds without step progress before a rank is declared hung (default 300)");
  submit->add_option_function<int>("--world-size", [s](int v) { s->req.set_world_size(v); }, "Ranks");
  submit->add_option_function<int>("--max-restarts", [s](int v) { s->req.set_max_restarts(v); }, "Restarts on failure");
  submit->add_option_function<int>("--priority", [s](int v) { s->req.set_priority(v); }, "Higher runs first");
  submit->add_option_function<std::string>("--idempotency-key",
                                           [s](const std::string& v) { s->req.set_idempotency_key(v); },
                                           "A retried submit with this key returns the same job");
  AddClientFlags(submit, c.get());
  submit->callback([run, c, s] { *run = [c, s] { return RunSubmit(*c, *s); }; });

  auto la = std::make_shared<LogsArgs>();
  CLI::App* logs = app.add_subcommand("logs", "A rank's output (stdout and stderr), from the worker that ran it");
  logs->add_option("job", la->job, "Job id")->required();
  logs->add_option("--rank", la->rank, "Rank (0)")->check(CLI::Range(0, 1023));
  logs->add_option("--attempt", la->attempt, "Attempt (default: the latest)")->check(CLI::Range(0, 1000000));
  logs->add_flag("--follow,-f", la->follow, "Keep printing new output until the job ends");
  logs->add_option("--tail", la->tail, "Only the last N lines (then follows with --follow)")->check(CLI::Range(0, 1000000));
  logs->callback([run, c, la] { *run = [c, la] { return RunLogs(*c, *la); }; });

  CLI::App* workers = app.add_subcommand("workers", "List the workers: slots, ranks, last heartbeat, state");
  AddClientFlags(workers, c.get());
  workers->callback([run, c] { *run = [c] { return RunWorkers(*c); }; });

  CLI::App* list = app.add_subcommand("list", "List jobs");
  AddClientFlags(list, c.get());
  auto list_state = std::make_shared<std::string>();
  auto page_size = std::make_shared<int>(500);
  list->add_option("--state", *list_state, "Only jobs in this state (e.g. RUNNING)");
  list->add_option("--page-size", *page_size, "Jobs per request (all pages are followed)")->check(CLI::Range(1, 1000));
  list->callback([run, c, list_state, page_size] {
    *run = [c, list_state, page_size] { return RunList(*c, *list_state, *page_size); };
  });

  auto job_id = std::make_shared<std::string>();
  CLI::App* status = app.add_subcommand("status", "Show a job and its per-epoch metrics");
  status->add_option("job", *job_id, "Job id")->required();
  AddClientFlags(status, c.get());
  status->callback([run, c, job_id] { *run = [c, job_id] { return RunStatus(*c, *job_id); }; });

  auto watch_timeout = std::make_shared<int>(86400);
  CLI::App* watch = app.add_subcommand("watch", "Follow a job live until it ends (exit 0 if it succeeded)");
  watch->add_option("job", *job_id, "Job id")->required();
  watch->add_option("--timeout", *watch_timeout, "Give up after this many seconds")->check(CLI::Range(1, 604800));
  AddClientFlags(watch, c.get());
  watch->callback([run, c, job_id, watch_timeout] {
    *run = [c, job_id, watch_timeout] { return RunWatch(*c, *job_id, *watch_timeout); };
  });

  CLI::App* cancel = app.add_subcommand("cancel", "Cancel a job; its ranks stop within seconds");
  cancel->add_option("job", *job_id, "Job id")->required();
  AddClientFlags(cancel, c.get());
  cancel->callback([run, c, job_id] { *run = [c, job_id] { return RunCancel(*c, *job_id); }; });

  auto delete_ids = std::make_shared<std::vector<std::string>>();
  auto delete_outputs = std::make_shared<bool>(false);
  CLI::App* del = app.add_subcommand(
      "delete", "Delete jobs that ended (SUCCEEDED, FAILED, CANCELLED): their records, and their rank logs on workers");
  del->add_option("jobs", *delete_ids, "Job ids")->required();
  del->add_flag("--outputs", *delete_outputs,
                "Also remove each job's run directory (checkpoints, metrics) under the coordinator's output root");
  del->callback([run, c, delete_ids, delete_outputs] {
    *run = [c, delete_ids, delete_outputs] { return RunDelete(*c, *delete_ids, *delete_outputs); };
  });

  auto k = std::make_shared<ClusterArgs>();
  CLI::App* cluster = app.add_subcommand("cluster", "A local cluster on loopback");
  cluster->require_subcommand(1);
  CLI::App* up = cluster->add_subcommand(
      "up", "Start a coordinator, workers and an evaluation server; returns once they registered");
  up->add_option("--servers", k->servers, "dfc-server replicas")->check(CLI::Range(0, 16));
  up->add_option("--server-listen", k->server_listen, "Their listen address (port 0: a free port each)");
  up->add_option("--listen", k->listen, "Coordinator address (port 0: a free port; printed)");
  up->add_option("--http-listen", k->http_listen,
                 "The coordinator's web dashboard (port 0: a free port; empty: off); its URL is printed");
  up->add_flag("--metrics", k->metrics, "Prometheus /metrics on every process (free ports, printed)");
  up->add_option("--workers", k->workers, "Worker processes")->check(CLI::Range(1, 64));
  up->add_option("--cpu-slots", k->cpu_slots, "Ranks per worker")->check(CLI::Range(1, 64));
  up->add_option("--gpus", k->gpus, "GPU ranks per worker (CUDA builds; -1: every visible GPU)")->check(CLI::Range(-1, 64));
  up->add_option("--state", k->state, "State directory (jobs.db, logs, job outputs)")->required();
  up->callback([run, k] { *run = [k] { return RunClusterUp(*k); }; });
  CLI::App* down = cluster->add_subcommand("down", "Stop the local cluster started in --state");
  down->add_option("--state", k->state, "State directory")->required();
  down->callback([run, k] { *run = [k] { return RunClusterDown(*k); }; });
}

}  // namespace dfc
