#include "tests/test_cluster.h"

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <regex>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/cpus.h"
#include "common/rpc/rpc_util.h"

namespace dfc::testing {

std::string Bin(const std::string& name) {
  return (std::filesystem::path(DfcBinary()).parent_path() / name).string();
}

std::string SyntheticShards(TempDir& dir, int count) {
  EXPECT_EQ(RunCommand(DfcBinary() + " synth --out " + dir.Join("syn") + " --count " + std::to_string(count)).exit_code, 0);
  EXPECT_EQ(RunCommand(DfcBinary() + " shard --src " + dir.Join("syn") + " --out " + dir.Join("sh") +
                       " --validation-split 0.25").exit_code, 0);
  return dir.Join("sh");
}

Processes::~Processes() {
  for (auto it = procs_.rbegin(); it != procs_.rend(); ++it) it->Terminate(std::chrono::seconds(5));
  for (auto it = procs_.rbegin(); it != procs_.rend(); ++it) it->Wait();
}

Subprocess& Processes::Start(std::vector<std::string> argv, const std::string& log) {
  SubprocessOptions o;
  o.argv = std::move(argv);
  if (!log.empty()) o.log_path = dir_->Join(log);
  auto p = Subprocess::Start(o);
  EXPECT_TRUE(p.ok()) << p.status();
  procs_.push_back(p.ok() ? std::move(*p) : Subprocess());
  return procs_.back();
}

std::string Processes::Log(const std::string& log) const {
  return std::filesystem::exists(dir_->Join(log)) ? ReadFileOrDie(dir_->Join(log)) : "";
}

TestCluster::TestCluster(Options options) : options_(std::move(options)), port_(PickFreePort()) {
  StartCoordinator();
  for (int w = 0; w < options_.workers; ++w) AddWorker();
  for (int s = 0; s < options_.servers; ++s) AddServer();
  // Submit checks a job against the live workers' slots: let them join.
  EXPECT_TRUE(WaitForLiveWorkers(options_.workers, 30)) << procs_.Log("worker-0.log");
}

std::string TestCluster::Dfc(const std::string& args) const {
  return DfcBinary() + " --coordinator " + address() + " " + options_.dfc_flags + " " + args;
}

void TestCluster::AddMetricsFlag(std::vector<std::string>& argv, std::vector<int>* ports) {
  if (!options_.operator_endpoints) return;
  ports->push_back(PickFreePort());
  argv.insert(argv.end(), {"--metrics-listen", "127.0.0.1:" + std::to_string(ports->back())});
}

void TestCluster::StartCoordinator() {
  std::vector<std::string> argv = {Bin("dfc-coordinator"), "--listen", address(), "--state", dir_.Join("state")};
  if (options_.operator_endpoints) {
    // The same ports across a restart of the coordinator.
    if (coordinator_metrics_port_ == 0) coordinator_metrics_port_ = PickFreePort();
    if (dashboard_port_ == 0) dashboard_port_ = PickFreePort();
    argv.insert(argv.end(), {"--metrics-listen", "127.0.0.1:" + std::to_string(coordinator_metrics_port_),
                             "--http-listen", "127.0.0.1:" + std::to_string(dashboard_port_)});
  }
  argv.insert(argv.end(), options_.coordinator_flags.begin(), options_.coordinator_flags.end());
  if (!options_.coordinator_env.empty()) {
    argv.insert(argv.begin(), options_.coordinator_env.begin(), options_.coordinator_env.end());
    argv.insert(argv.begin(), "/usr/bin/env");
  }
  coordinator_ = &procs_.Start(argv, "coordinator.log");
  for (int i = 0; i < 300 && RunCommand(Dfc("list")).exit_code != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

void TestCluster::KillCoordinator() {
  if (coordinator_ != nullptr) coordinator_->Stop(std::chrono::milliseconds(0));
  coordinator_ = nullptr;
}

std::string TestCluster::WorkerDir(int i) { return dir_.Join("worker-" + std::to_string(i)); }

Subprocess& TestCluster::AddWorker() {
  const int i = workers();
  std::vector<std::string> argv = {Bin("dfc-worker"), "--coordinator", address(), "--work-dir", WorkerDir(i)};
  // Workers on one machine share its CPUs, as `dfc cluster up` starts them.
  if (options_.workers > 1) {
    argv.insert(argv.end(), {"--cpus", std::to_string(CpuShare(UsableCpus(), options_.workers))});
  }
  argv.insert(argv.end(), options_.worker_flags.begin(), options_.worker_flags.end());
  AddMetricsFlag(argv, &worker_metrics_ports_);
  argv.insert(argv.begin(), options_.worker_prefix.begin(), options_.worker_prefix.end());
  workers_.push_back(&procs_.Start(argv, "worker-" + std::to_string(i) + ".log"));
  return *workers_.back();
}

int TestCluster::AddServer() {
  const int i = static_cast<int>(servers_.size());
  server_addresses_.push_back("127.0.0.1:" + std::to_string(PickFreePort()));
  std::vector<std::string> argv = {Bin("dfc-server"), "--listen", server_addresses_.back(), "--coordinator",
                                   address(), "--models-dir", dir_.Join("state/models")};
  argv.insert(argv.end(), options_.server_flags.begin(), options_.server_flags.end());
  AddMetricsFlag(argv, &server_metrics_ports_);
  const std::string log = "server-" + std::to_string(i) + ".log";
  servers_.push_back(&procs_.Start(argv, log));
  auto channel = grpc::CreateChannel(server_addresses_.back(), grpc::InsecureChannelCredentials());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (HealthStatus(channel) != "SERVING" && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(HealthStatus(channel), "SERVING") << procs_.Log(log);
  return i;
}

bool TestCluster::WaitForLiveWorkers(int n, int timeout_s) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  while (std::chrono::steady_clock::now() < deadline) {
    auto r = RunCommand(Dfc("workers --json"));
    if (r.exit_code == 0) {
      const nlohmann::json j = nlohmann::json::parse(r.out, nullptr, false);
      int live = 0;
      if (j.is_object() && j.contains("workers")) {
        for (const auto& w : j["workers"]) live += w.value("state", "") == "live";
      }
      if (live >= n) return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

int TestCluster::WorkerIndexOf(const std::string& job_id, int attempt, int rank) {
  const std::string started = "started " + job_id + " attempt " + std::to_string(attempt) + " rank " +
                              std::to_string(rank) + "/";
  for (int w = 0; w < workers(); ++w) {
    if (procs_.Log("worker-" + std::to_string(w) + ".log").find(started) != std::string::npos) return w;
  }
  return -1;
}

pid_t TestCluster::WorkerOf(const std::string& job_id, int rank) {
  const int w = WorkerIndexOf(job_id, 1, rank);
  return w >= 0 ? worker(w).pid() : -1;
}

std::string TestCluster::RankLog(const std::string& job_id, int attempt, int rank) {
  const int w = WorkerIndexOf(job_id, attempt, rank);
  if (w < 0) return "";
  return WorkerDir(w) + "/" + job_id + "/attempt-" + std::to_string(attempt) + "/rank-" + std::to_string(rank) + "/log";
}

pid_t TestCluster::RankPid(const std::string& job_id, int attempt, int rank) {
  const std::regex re("started " + job_id + " attempt " + std::to_string(attempt) + " rank " + std::to_string(rank) +
                      "/[0-9]+ \\(pid ([0-9]+)\\)");
  for (size_t w = 0; w < workers_.size(); ++w) {
    std::smatch m;
    const std::string log = procs_.Log("worker-" + std::to_string(w) + ".log");
    if (std::regex_search(log, m, re)) return std::stoi(m[1]);
  }
  return -1;
}

}  // namespace dfc::testing
