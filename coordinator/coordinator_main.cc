// dfc-coordinator: job queue, scheduler and API server.
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include <CLI/CLI.hpp>

#include "common/http/metrics_endpoint.h"
#include "coordinator/coordinator_metrics.h"
#include "coordinator/coordinator_service.h"
#include "coordinator/dashboard.h"

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }
}  // namespace

// Long by design: the flags with their checks, then the wiring of the services,
// read top to bottom (a table more than logic).
int main(int argc, char** argv) {
  CLI::App app{"dfc-coordinator: schedules DFC training jobs across workers and keeps the model catalogue"};
  std::string listen = "127.0.0.1:50051";
  dfc::CoordinatorOptions opts;
  dfc::RpcSecurity sec;
  int heartbeat_ms = 500, worker_timeout_ms = 3000;
  app.add_option("--listen", listen, "Address to serve gRPC on");
  int max_rpc_threads = dfc::kDefaultMaxRpcThreads;
  app.add_option("--max-rpc-threads", max_rpc_threads,
                 "Calls served at once (each open stream holds a thread); beyond, RESOURCE_EXHAUSTED")
      ->check(CLI::Range(4, 65536));
  app.add_option("--state", opts.state_dir, "State directory (SQLite job database)")->required();
  int schedule_timeout_s = 60;
  app.add_option("--schedule-timeout", schedule_timeout_s, "Seconds a placed job's rank 0 may take to start before "
                 "the job goes back to the queue")->check(CLI::Range(1, 3600));
  int reattach_timeout_s = 60;
  app.add_option("--reattach-timeout", reattach_timeout_s,
                 "Seconds in which the workers must report back every rank of a job that was running when this "
                 "coordinator started, for the job to run on untouched; else it resumes from its checkpoint")
      ->check(CLI::Range(1, 3600));
  app.add_option("--max-bypass", opts.max_bypass, "Jobs that may start ahead of a queue head that does not fit yet")
      ->check(CLI::Range(0, 1000));
  app.add_option("--data-root", opts.data_roots,
                 "Jobs' data and init weights must lie inside (repeatable; default: the state directory's parent)");
  app.add_option("--output-root", opts.output_root, "Where job outputs go (shared with workers; default STATE/jobs)");
  app.add_option("--heartbeat-ms", heartbeat_ms, "Worker heartbeat interval")->check(CLI::Range(50, 60000));
  app.add_option("--worker-timeout-ms", worker_timeout_ms, "A silent worker is dead after this")->check(CLI::Range(200, 600000));
  int max_restart_backoff_s = 60;
  app.add_option("--max-restart-backoff", max_restart_backoff_s,
                 "Seconds a failed job waits at most before it is placed again (the wait starts at 3 heartbeats "
                 "and doubles with each restart)")
      ->check(CLI::Range(1, 86400));
  int keep_ended_days = 0;
  app.add_option("--keep-ended-days", keep_ended_days,
                 "Delete the records of jobs that ended more than this many days ago, as `dfc delete` does (their "
                 "outputs stay); 0: keep them all")
      ->check(CLI::Range(0, 36500));
  app.add_option("--tls-cert", sec.tls_cert, "Server certificate (PEM); enables TLS");
  app.add_option("--tls-key", sec.tls_key, "Server key (PEM)");
  app.add_option("--tls-ca", sec.tls_ca, "CA (PEM) that client certificates must chain to; requires them");
  std::string worker_token_file;
  bool insecure = false;
  app.add_option("--worker-token-file", worker_token_file,
                 "File holding the token workers (and their ranks) must present; users' token cannot register "
                 "workers or report metrics. Without it workers use --token-file's token (one shared secret)")
      ->check(CLI::ExistingFile);
  app.add_flag("--insecure", insecure, "Allow a non-loopback --listen without a token");
  std::string token_file;
  app.add_option("--token-file", token_file,
                 "File holding the bearer token callers must present (one per line: any is accepted; read again "
                 "when it changes)")
      ->check(CLI::ExistingFile);
  std::string http_listen;
  app.add_option("--http-listen", http_listen,
                 "Serve the read-only web dashboard on HOST:PORT (off when empty; HTTPS with --tls-cert; "
                 "needs --token-file's token when one is set)");
  std::string backup_to;
  app.add_option("--backup-to", backup_to,
                 "Write a consistent copy of --state's job database to this file and exit (safe while a "
                 "coordinator runs on --state)");
  std::string restore_from;
  app.add_option("--restore-from", restore_from,
                 "Make --state's job database a checked copy of this backup and exit (refused while a coordinator "
                 "runs on --state; the database it replaces is moved to STATE/before-restore-TIME/)");
  dfc::StateBackupOptions backups;
  int backup_interval_s = 86400;
  app.add_option("--backup-dir", backups.dir,
                 "Take a copy of the job database into this folder every --backup-interval while running, as "
                 "jobs-YYYYMMDDTHHMMSSZ.db (off when empty; put it on another volume than --state)");
  app.add_option("--backup-interval", backup_interval_s,
                 "Seconds between scheduled copies (the first is due this long after the newest copy in "
                 "--backup-dir, at once when there is none)")
      ->check(CLI::Range(1, 366 * 86400));
  app.add_option("--backup-keep", backups.keep, "Scheduled copies kept; older ones are removed")
      ->check(CLI::Range(1, 100000));
  dfc::MetricsFlags metrics_flags;
  metrics_flags.Add(app);
  CLI11_PARSE(app, argc, argv);
  if (!backup_to.empty() && !restore_from.empty()) {
    std::fprintf(stderr, "dfc-coordinator: --backup-to and --restore-from are separate steps: give one\n");
    return 2;
  }
  if (!backup_to.empty()) {
    const std::string db = dfc::StateDatabase(opts.state_dir);
    auto jobs = dfc::JobStore::Backup(db, backup_to);
    if (!jobs.ok()) {
      std::fprintf(stderr, "dfc-coordinator: %s\n", std::string(jobs.status().message()).c_str());
      return 2;
    }
    std::printf("dfc-coordinator: backed up %lld job(s) from %s to %s\n", static_cast<long long>(*jobs), db.c_str(),
                backup_to.c_str());
    return 0;
  }
  if (!restore_from.empty()) {
    auto restored = dfc::RestoreState(opts.state_dir, restore_from);
    if (!restored.ok()) {
      std::fprintf(stderr, "dfc-coordinator: %s\n", std::string(restored.status().message()).c_str());
      return 2;
    }
    std::printf("dfc-coordinator: restored %lld job(s) from %s into %s\n", static_cast<long long>(restored->jobs),
                restore_from.c_str(), restored->database.c_str());
    if (!restored->aside.empty()) std::printf("the database it replaced is in %s\n", restored->aside.c_str());
    return 0;
  }
  if (!token_file.empty()) {
    auto t = dfc::BearerToken::FromFile(token_file, "--token-file");
    if (!t.ok()) {
      std::fprintf(stderr, "dfc-coordinator: %s\n", std::string(t.status().message()).c_str());
      return 2;
    }
    sec.token = *t;
  }
  dfc::BearerToken worker_token = sec.token;
  if (!worker_token_file.empty()) {
    auto t = dfc::BearerToken::FromFile(worker_token_file, "--worker-token-file");
    if (!t.ok()) {
      std::fprintf(stderr, "dfc-coordinator: %s\n", std::string(t.status().message()).c_str());
      return 2;
    }
    worker_token = *t;
    if (worker_token.Shares(sec.token)) {
      std::fprintf(stderr, "dfc-coordinator: --worker-token-file holds a token of --token-file (the users'); "
                   "they must differ\n");
      return 2;
    }
  }
  if (!dfc::IsLoopbackListen(listen) && sec.token.empty()) {
    if (!insecure) {
      std::fprintf(stderr,
                   "dfc-coordinator: refusing to listen on %s without a token: anyone who reaches it could submit "
                   "jobs and register workers. Give --token-file (and --worker-token-file), or --insecure\n",
                   listen.c_str());
      return 2;
    }
    std::fprintf(stderr, "dfc-coordinator: WARNING: listening on %s with no token (--insecure): anyone who reaches "
                 "this address controls the cluster\n", listen.c_str());
  } else if (!sec.token.empty() && worker_token_file.empty()) {
    std::fprintf(stderr, "dfc-coordinator: warning: workers and users share one token; give workers their own with "
                 "--worker-token-file\n");
  }
  opts.heartbeat_interval = std::chrono::milliseconds(heartbeat_ms);
  opts.schedule_timeout = std::chrono::seconds(schedule_timeout_s);
  opts.reattach_timeout = std::chrono::seconds(reattach_timeout_s);
  opts.worker_timeout = std::chrono::milliseconds(worker_timeout_ms);
  opts.max_restart_backoff = std::chrono::seconds(max_restart_backoff_s);
  opts.keep_ended = std::chrono::hours(24 * keep_ended_days);
  if (!http_listen.empty() && !dfc::IsLoopbackListen(http_listen) && sec.token.empty() && !insecure) {
    std::fprintf(stderr, "dfc-coordinator: refusing to serve the dashboard on %s without a token; give "
                 "--token-file, or --insecure\n", http_listen.c_str());
    return 2;
  }
  auto metrics = std::make_shared<dfc::CoordinatorMetrics>();
  metrics->Hook(&opts);
  auto coordinator = dfc::Coordinator::Create(opts);
  if (!coordinator.ok()) {
    std::fprintf(stderr, "dfc-coordinator: %s\n", std::string(coordinator.status().message()).c_str());
    return 2;
  }
  std::unique_ptr<dfc::StateBackups> scheduled_backups;
  if (!backups.dir.empty()) {
    backups.database = dfc::StateDatabase(opts.state_dir);
    backups.interval = std::chrono::seconds(backup_interval_s);
    auto state_id = (*coordinator)->store()->StateId();
    if (!state_id.ok()) {
      std::fprintf(stderr, "dfc-coordinator: %s\n", std::string(state_id.status().message()).c_str());
      return 2;
    }
    backups.state_id = *state_id;
    auto b = dfc::StateBackups::Start(backups);
    if (!b.ok()) {
      std::fprintf(stderr, "dfc-coordinator: %s\n", std::string(b.status().message()).c_str());
      return 2;
    }
    scheduled_backups = std::move(*b);
  }
  auto creds = dfc::MakeServerCredentials(sec);
  if (!creds.ok()) {
    std::fprintf(stderr, "dfc-coordinator: %s\n", std::string(creds.status().message()).c_str());
    return 2;
  }
  dfc::JobServiceImpl jobs(coordinator->get(), sec.token.Excluding(worker_token));
  dfc::WorkerServiceImpl workers(coordinator->get(), worker_token.Excluding(sec.token));
  dfc::CatalogServiceImpl catalog(coordinator->get(), worker_token.Excluding(sec.token));
  int port = 0;
  std::unique_ptr<grpc::Server> server = dfc::StartGrpcServer(listen, *creds, {&jobs, &workers, &catalog}, &port,
                                                              max_rpc_threads);
  if (!server) {
    std::fprintf(stderr, "dfc-coordinator: %s\n", dfc::CannotListen(listen).c_str());
    return 1;
  }
  metrics->Attach(coordinator->get());
  if (scheduled_backups) metrics->Attach(scheduled_backups.get());
  auto metrics_server = dfc::StartMetricsEndpoint(metrics_flags, {metrics},
                                                  {{"--tls-cert", sec.tls_cert}, {"--tls-ca", sec.tls_ca}},
                                                  sec.tls_cert, sec.tls_key);
  if (!metrics_server.ok()) {
    std::fprintf(stderr, "dfc-coordinator: %s\n", std::string(metrics_server.status().message()).c_str());
    return 2;
  }
  std::unique_ptr<dfc::HttpServer> dashboard;
  if (!http_listen.empty()) {
    dfc::HttpOptions h;
    h.listen = http_listen;
    h.tls_cert = sec.tls_cert;
    h.tls_key = sec.tls_key;
    h.token = sec.token.Excluding(worker_token);
    h.name = "--http-listen";
    auto d = dfc::HttpServer::Start(h, dfc::DashboardHandler(coordinator->get()));
    if (!d.ok()) {
      std::fprintf(stderr, "dfc-coordinator: %s\n", std::string(d.status().message()).c_str());
      return 2;
    }
    dashboard = std::move(*d);
  }
  std::printf("dfc-coordinator listening on %s (state %s)\n", dfc::BoundAddress(listen, port).c_str(),
              opts.state_dir.c_str());
  if (*metrics_server) std::printf("metrics: %s/metrics\n", (*metrics_server)->url().c_str());
  if (dashboard) std::printf("dashboard: %s/\n", dashboard->url().c_str());
  std::fflush(stdout);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  while (!g_stop) {
    (*coordinator)->Tick();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  dashboard.reset();
  metrics_server->reset();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  std::fprintf(stderr, "dfc-coordinator: shut down cleanly\n");
  return 0;
}
