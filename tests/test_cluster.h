#ifndef DFC_TESTS_TEST_CLUSTER_H_
#define DFC_TESTS_TEST_CLUSTER_H_

#include <deque>
#include <string>
#include <vector>

#include "common/subprocess.h"
#include "tests/test_util.h"

namespace dfc::testing {

// A built binary beside `dfc` (dfc-coordinator, dfc-worker, dfc-server, ...).
std::string Bin(const std::string& name);

// `dfc synth --count count` into DIR/syn, sharded with a 0.25 validation
// split into DIR/sh; returns DIR/sh.
std::string SyntheticShards(TempDir& dir, int count);

// The one process harness of the tests: processes started here have their
// output in DIR/LOG and are stopped (SIGTERM, SIGKILL after 5 s, newest
// first) when the harness goes, whatever the test did; they also die with
// the test process.
class Processes {
 public:
  explicit Processes(TempDir* dir) : dir_(dir) {}
  ~Processes();
  Processes(const Processes&) = delete;
  Processes& operator=(const Processes&) = delete;
  // Starts argv; its output goes to DIR/log (nowhere special when log is empty).
  Subprocess& Start(std::vector<std::string> argv, const std::string& log);
  // The log's text so far ("" if none).
  std::string Log(const std::string& log) const;

 private:
  TempDir* const dir_;
  std::deque<Subprocess> procs_;  // stable addresses
};

// A coordinator with workers and evaluation servers on loopback, in a
// temporary state directory. Ready means: the coordinator answers, lists
// every worker as live and every server as announced, and every server's
// health is SERVING.
class TestCluster {
 public:
  struct Options {
    int workers = 0;
    int servers = 0;
    std::vector<std::string> coordinator_flags = {"--heartbeat-ms", "200", "--worker-timeout-ms", "1500"};
    // NAME=VALUE pairs in the coordinator's environment alone (it runs through env(1)).
    std::vector<std::string> coordinator_env = {};
    std::vector<std::string> worker_flags = {"--cpu-slots", "1"};
    // Words before each worker's argv: a wrapper that ends by exec'ing it.
    std::vector<std::string> worker_prefix = {};
    std::vector<std::string> server_flags = {"--device", "cpu"};
    // Before the subcommand of every Dfc() line (TLS and token files).
    std::string dfc_flags = "";
    // The operator's endpoints: --metrics-listen on every process and the
    // coordinator's dashboard (--http-listen), each on a free port.
    bool operator_endpoints = false;
  };
  explicit TestCluster(int workers) : TestCluster(Options{workers}) {}
  explicit TestCluster(Options options);

  // Returns once it answers.
  void StartCoordinator();
  void KillCoordinator();
  // Starts a worker; returns without waiting for it to register.
  Subprocess& AddWorker();
  // Starts a server on a free port; returns once it is SERVING.
  int AddServer();
  // Asks the coordinator (dfc workers) until n workers are live.
  bool WaitForLiveWorkers(int n, int timeout_s = 30);
  // The worker process running `job_id`'s rank `rank` (attempt 1), from the worker logs.
  pid_t WorkerOf(const std::string& job_id, int rank);
  // The pid of `job_id`'s rank `rank` in `attempt`, from the worker logs
  // ("started JOB attempt A rank R/W (pid P)"); -1 if not started yet.
  pid_t RankPid(const std::string& job_id, int attempt, int rank);
  // The path of that rank's log in its worker's work directory; "" if not started yet.
  std::string RankLog(const std::string& job_id, int attempt, int rank);

  Subprocess& worker(int i) { return *workers_.at(static_cast<size_t>(i)); }
  Subprocess& server(int i) { return *servers_.at(static_cast<size_t>(i)); }
  int workers() const { return static_cast<int>(workers_.size()); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  pid_t coordinator_pid() const { return coordinator_ != nullptr ? coordinator_->pid() : -1; }
  std::string server_address(int i) const { return server_addresses_.at(static_cast<size_t>(i)); }
  std::string Dfc(const std::string& args) const;
  // With operator_endpoints: "http://127.0.0.1:PORT" of each endpoint.
  std::string coordinator_metrics() const { return Url(coordinator_metrics_port_); }
  std::string dashboard() const { return Url(dashboard_port_); }
  std::string worker_metrics(int i) const { return Url(worker_metrics_ports_.at(static_cast<size_t>(i))); }
  std::string server_metrics(int i) const { return Url(server_metrics_ports_.at(static_cast<size_t>(i))); }
  TempDir& dir() { return dir_; }
  Processes& processes() { return procs_; }
  // Worker i's --work-dir (rank logs and status), inside the cluster's
  // directory: the fifth word of its argv, after any worker_prefix.
  std::string WorkerDir(int i);

 private:
  static std::string Url(int port) { return "http://127.0.0.1:" + std::to_string(port); }
  // --metrics-listen on a free port when operator_endpoints; records the port.
  void AddMetricsFlag(std::vector<std::string>& argv, std::vector<int>* ports);
  // The worker whose log says it started that rank; -1 if none did yet.
  int WorkerIndexOf(const std::string& job_id, int attempt, int rank);
  TempDir dir_;  // first: the processes go before it
  Processes procs_{&dir_};
  const Options options_;
  const int port_;
  Subprocess* coordinator_ = nullptr;
  std::vector<Subprocess*> workers_, servers_;
  std::vector<std::string> server_addresses_;
  int coordinator_metrics_port_ = 0, dashboard_port_ = 0;
  std::vector<int> worker_metrics_ports_, server_metrics_ports_;
};

}  // namespace dfc::testing

#endif  // DFC_TESTS_TEST_CLUSTER_H_
