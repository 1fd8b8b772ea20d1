// dfc-worker: runs the training ranks the coordinator assigns to this machine.
#include <sys/prctl.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include <CLI/CLI.hpp>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/run_dir.h"
#include "common/sandbox.h"
#include "common/subprocess.h"
#include "common/http/metrics_endpoint.h"
#include "worker/worker_agent.h"

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

// `dfc-worker rank --sandbox on`: enters RankSandboxPolicy before anything
// of the job's is read, while this is the only thread, and says so in the
// rank's log. A failure is transient: it is this worker's, not the job's.
absl::Status ConfineRank(const dfc::v1::RankAssignment& a) {
  std::error_code ec;
  std::filesystem::create_directories(a.output_dir(), ec);  // a rule needs the folder to exist
  const char* rank_dir = std::getenv("DFC_RANK_DIR");
  auto report = dfc::EnterSandbox(dfc::RankSandboxPolicy(a, rank_dir != nullptr ? rank_dir : ""));
  if (!report.ok()) {
    return absl::UnavailableError(absl::StrCat("cannot confine the rank: ", report.status().message(),
                                               " (dfc-worker --rank-sandbox-off runs ranks unconfined)"));
  }
  std::printf("rank %d: confined to its job's files (%s)\n", a.rank(), report->Describe().c_str());
  return absl::OkStatus();
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"dfc-worker: runs DFC training ranks for a coordinator"};
  dfc::WorkerAgentOptions opts;
  std::string token_file;
  app.add_option("--coordinator", opts.coordinator, "Coordinator address host:port")->envname("DFC_COORDINATOR");
  app.add_option("--cpu-slots", opts.cpu_slots, "CPU ranks this worker runs")->check(CLI::Range(1, 1024));
  app.add_option("--cpus", opts.cpus,
                 "CPUs this worker's ranks share, an equal part per slot (default: the CPUs this process may use, "
                 "its affinity and cgroup limit)")->check(CLI::Range(0, 1 << 16));
  app.add_option("--gpus", opts.gpus, "GPU ranks, one per GPU (-1: every visible GPU; needs a CUDA build)")
      ->check(CLI::Range(-1, 64));
  app.add_option("--advertise-host", opts.advertise_host, "Address other ranks reach this machine on");
  app.add_option("--work-dir", opts.work_dir, "Per-rank logs and status (default: $TMPDIR/dfc-worker-PID)");
  int hang_timeout_s = 300;
  app.add_option("--hang-timeout", hang_timeout_s, "Seconds without step progress before a rank is killed as hung "
                 "(a job's hang_timeout_s overrides)")->check(CLI::Range(5, 86400));
  double stop_grace_s = 3;
  app.add_option("--stop-grace", stop_grace_s, "Seconds a stopped rank (its job cancelled or moved, this worker shut "
                 "down) has to finish its step, save it and exit before it is killed")->check(CLI::Range(0.0, 600.0));
  app.add_option("--tls-ca", opts.security.tls_ca, "CA (PEM) of the coordinator's certificate; enables TLS");
  app.add_option("--tls-cert", opts.security.tls_cert, "Client certificate (PEM)");
  app.add_option("--tls-key", opts.security.tls_key, "Client key (PEM)");
  dfc::MetricsFlags metrics_flags;
  metrics_flags.Add(app);
  app.add_option("--token-file", token_file,
                 "File holding the bearer token (the first line is sent; read again when it changes)")
      ->check(CLI::ExistingFile);
  CLI::App* rank_cmd = app.add_subcommand("rank", "Run one rank (started by the worker itself)");
  std::string assignment_b64;
  rank_cmd->add_option("--assignment", assignment_b64)->required();
  std::string rank_sandbox = "on";
  rank_cmd->add_option("--sandbox", rank_sandbox, "Confine the rank to its job's files (RankSandboxPolicy)")
      ->check(CLI::IsMember({"on", "off"}));
  int rank_cpus = 0;
  rank_cmd->add_option("--cpu-share", rank_cpus, "CPUs the rank may use (its worker's share per slot)")
      ->check(CLI::Range(0, 1 << 16));
  bool rank_sandbox_off = false;
  app.add_flag("--rank-sandbox-off", rank_sandbox_off,
               "Run CPU ranks unconfined (by default each confines itself with seccomp and Landlock to its "
               "job's data, weights and run directory)");
  CLI11_PARSE(app, argc, argv);
  // The token never reaches a rank: not through this environment either.
  const char* env_token = std::getenv("DFC_TOKEN");
  const std::string token_from_env = env_token != nullptr ? env_token : "";
  ::unsetenv("DFC_TOKEN");
  if (!token_file.empty()) {
    auto t = dfc::BearerToken::FromFile(token_file, "--token-file");
    if (!t.ok()) {
      std::fprintf(stderr, "dfc-worker: %s\n", std::string(t.status().message()).c_str());
      return 2;
    }
    opts.security.token = *t;
  } else if (!token_from_env.empty()) {
    opts.security.token = dfc::BearerToken(token_from_env);
  }
  opts.hang_timeout = std::chrono::seconds(hang_timeout_s);
  opts.kill_grace = std::chrono::milliseconds(static_cast<int64_t>(stop_grace_s * 1000));
  if (rank_cmd->parsed()) {
    std::string bytes;
    dfc::v1::RankAssignment a;
    if (!absl::Base64Unescape(assignment_b64, &bytes) || !a.ParseFromString(bytes)) {
      std::fprintf(stderr, "dfc-worker rank: --assignment is not a valid assignment\n");
      return 2;
    }
    const bool confine = rank_sandbox == "on";
    // First, before anything is created there: the coordinator's claim of
    // the run directory for this attempt must be visible on this worker.
    absl::Status st = a.output_dir().empty()
                          ? absl::OkStatus()  // no job to run: refused below, naming what it lacks
                          : dfc::run_dir::CheckClaimedFor(a.output_dir(), a.attempt(), std::chrono::seconds(5));
    if (st.ok() && confine) st = ConfineRank(a);
    if (!confine) std::printf("rank %d: not confined (a GPU rank, or dfc-worker --rank-sandbox-off)\n", a.rank());
    std::fflush(stdout);
    if (st.ok()) {
      try {
        st = dfc::RunRank(a, rank_cpus);
      } catch (const std::exception& e) {
        st = absl::InternalError(e.what());
      }
      if (confine && absl::StrContains(st.message(), std::strerror(EACCES))) {
        // On the first line: the one that becomes the job's reason.
        std::string msg(st.message());
        msg.insert(std::min(msg.find('\n'), msg.size()),
                   " (a confined rank opens only files beneath its job's data, init and run directory: "
                   "a symlink out of them is refused)");
        st = absl::Status(st.code(), msg);
      }
    }
    if (!st.ok()) {
      std::fprintf(stderr, "dfc-worker rank %d of %s: %s\n", a.rank(), a.job_id().c_str(),
                   std::string(st.message()).c_str());
      return dfc::ReportRankFailure(st);
    }
    return 0;
  }
  if (opts.coordinator.empty()) {
    std::fprintf(stderr, "dfc-worker: --coordinator is required\n");
    return 2;
  }
  // Ranks run as this user and read users' files: they may not attach to
  // this process or read its memory and environment (/proc/PID/mem, environ),
  // where the token is.
  ::prctl(PR_SET_DUMPABLE, 0);
  if (opts.gpus == -1) {
    opts.gpus = static_cast<int>(torch::cuda::device_count());
    if (opts.gpus == 0) {
      std::fprintf(stderr, "dfc-worker: --gpus -1 but no GPU is visible to this process\n");
      return 2;
    }
  }
  if (opts.gpus > 0 && !torch::cuda::is_available()) {
    std::fprintf(stderr, "dfc-worker: --gpus %d but this build/machine has no CUDA\n", opts.gpus);
    return 2;
  }
  opts.rank_binary = dfc::SelfExecutable();
  opts.confine_ranks = !rank_sandbox_off;
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  dfc::WorkerMetrics metrics(opts.cpu_slots, opts.gpus);
  opts.metrics = &metrics;
  auto metrics_server = dfc::StartMetricsEndpoint(
      metrics_flags, {metrics.registry()},
      {{"--tls-cert", opts.security.tls_cert}, {"--tls-ca", opts.security.tls_ca}});
  if (!metrics_server.ok()) {
    std::fprintf(stderr, "dfc-worker: %s\n", std::string(metrics_server.status().message()).c_str());
    return 2;
  }
  if (*metrics_server) std::fprintf(stderr, "dfc-worker: metrics on %s/metrics\n", (*metrics_server)->url().c_str());
  dfc::WorkerAgent agent(opts);
  absl::Status st = agent.Run(&g_stop);
  if (!st.ok()) {
    std::fprintf(stderr, "dfc-worker: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}
