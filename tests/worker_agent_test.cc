// The worker's forwarding of a rank's reports, against a WorkerService on
// loopback that plays the coordinator (this class's unit test; the whole
// path, with the real coordinator and a training rank, is
// ClusterTest.ARankHoldsNoCredentialAndItsWorkerForwardsItsReports).
#include "worker/worker_agent.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "absl/synchronization/mutex.h"
#include "common/record_file.h"
#include "common/rpc/rpc_util.h"
#include "dfc/v1/dfc.grpc.pb.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

// Registers the worker as w1, heartbeats every 50 ms; takes every report.
class RegisteringCoordinator : public v1::WorkerService::Service {
 protected:
  // Starts job-1's one rank at the first heartbeat; whether it did now.
  bool AssignOnce(v1::HeartbeatResponse* resp) {
    if (assigned_.exchange(true)) return false;
    v1::RankAssignment* a = resp->add_start();
    a->set_job_id("job-1");
    a->set_attempt(1);
    a->set_rank(0);
    a->set_world_size(1);
    return true;
  }

 public:
  grpc::Status RegisterWorker(grpc::ServerContext*, const v1::RegisterWorkerRequest*,
                              v1::RegisterWorkerResponse* resp) override {
    resp->set_worker_id("w1");
    resp->set_heartbeat_interval_ms(50);
    return grpc::Status::OK;
  }
  grpc::Status ReportMetrics(grpc::ServerContext*, const v1::ReportMetricsRequest*,
                             v1::ReportMetricsResponse*) override {
    return grpc::Status::OK;
  }

 private:
  std::atomic<bool> assigned_{false};
};

// Runs `body` while a worker on `work_dir`, whose ranks run `rank_binary`,
// works for `fake` on loopback; stops the worker after.
void WhileAWorkerRuns(v1::WorkerService::Service& fake, const std::string& rank_binary, const std::string& work_dir,
                      const std::function<void()>& body, int gpus = 0) {
  int port = 0;
  auto server = StartGrpcServer("127.0.0.1:0", grpc::InsecureServerCredentials(), {&fake}, &port);
  ASSERT_NE(server, nullptr);
  WorkerAgentOptions o;
  o.coordinator = "127.0.0.1:" + std::to_string(port);
  o.rank_binary = rank_binary;
  o.work_dir = work_dir;
  o.gpus = gpus;
  WorkerAgent agent(o);
  std::atomic<bool> stop{false};
  std::thread run([&] { EXPECT_TRUE(agent.Run(&stop).ok()); });
  body();
  stop = true;
  run.join();
  server->Shutdown();
}

// Assigns one rank, answers ReportMetrics with UNAVAILABLE `failures` times
// first, and notes which epochs it had when the rank's exit arrived.
class FakeCoordinator final : public RegisteringCoordinator {
 public:
  explicit FakeCoordinator(int failures) : failures_(failures) {}
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override {
    absl::MutexLock lock(&mu_);
    for (const v1::RankStatus& r : req->ranks()) {
      if (r.exited() && !exit_seen_) {
        exit_seen_ = true;
        epochs_at_exit_ = epochs_;
        exit_code_ = r.exit_code();
      }
    }
    AssignOnce(resp);
    return grpc::Status::OK;
  }
  grpc::Status ReportMetrics(grpc::ServerContext*, const v1::ReportMetricsRequest* req,
                             v1::ReportMetricsResponse*) override {
    absl::MutexLock lock(&mu_);
    if (failures_ > 0) {
      --failures_;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the coordinator is busy");
    }
    EXPECT_EQ(req->job_id(), "job-1");
    if (req->has_epoch()) epochs_.push_back(req->epoch().epoch());
    if (req->has_progress()) last_step_ = req->progress().step();
    return grpc::Status::OK;
  }

  bool WaitForExit(std::chrono::seconds limit) {
    absl::MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&exit_seen_), absl::FromChrono(limit));
  }
  std::vector<int> epochs_at_exit() {
    absl::MutexLock lock(&mu_);
    return epochs_at_exit_;
  }
  int exit_code() {
    absl::MutexLock lock(&mu_);
    return exit_code_;
  }
  int64_t last_step() {
    absl::MutexLock lock(&mu_);
    return last_step_;
  }

 private:
  absl::Mutex mu_;
  int failures_;
  bool exit_seen_ = false;
  int exit_code_ = -1;
  std::vector<int> epochs_;
  std::vector<int> epochs_at_exit_;
  int64_t last_step_ = 0;
};

// Runs a worker whose "rank" puts `reports` in place as DIR/reports at once
// and exits with status 3; returns the fake once the exit has arrived.
void RunRankThatReports(FakeCoordinator& fake, const std::string& reports) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("reports"), reports);
  const std::string script = dir.Join("rank.sh");
  testing::WriteFileOrDie(script, "#!/bin/sh\ncp '" + dir.Join("reports") + "' \"$DFC_RANK_DIR/reports.tmp\" && mv \"$DFC_RANK_DIR/reports.tmp\" \"$DFC_RANK_DIR/reports\"\nexit 3\n");
  ASSERT_EQ(::chmod(script.c_str(), 0755), 0);
  bool exited = false;
  WhileAWorkerRuns(fake, script, dir.Join("work"), [&] { exited = fake.WaitForExit(std::chrono::seconds(20)); });
  ASSERT_TRUE(exited) << "the rank's exit never reached the coordinator";
  EXPECT_EQ(fake.exit_code(), 3);
}

std::string Report(int epoch, int64_t step) {
  v1::ReportMetricsRequest r;
  r.set_job_id("someone-else's-job");  // the worker sends it as the rank's own
  if (epoch > 0) r.mutable_epoch()->set_epoch(epoch);
  if (step > 0) {
    r.mutable_progress()->set_step(step);
    r.mutable_progress()->set_phase(std::string(100, 'p'));
  }
  return EncodeRecord(r.SerializeAsString());
}

// The coordinator refuses the first report as transient (UNAVAILABLE) and
// answers the heartbeat right after: the rank has exited, but its exit is
// held back until its epochs are forwarded, so the coordinator has all
// three when it hears that the rank ended (without the hold it heard of
// the exit with none, and the worker forgot the rank and its reports).
TEST(WorkerAgentTest, AnExitedRanksReportsArriveBeforeItsExitDespiteATransientFailure) {
  FakeCoordinator fake(/*failures=*/2);
  std::string reports;
  for (int e = 1; e <= 3; ++e) reports += Report(e, 0);
  RunRankThatReports(fake, reports);
  EXPECT_EQ(fake.epochs_at_exit(), (std::vector<int>{1, 2, 3}));
}

// More than one read's worth (1 MiB) of step progress (3.5 MiB here) before the last
// epochs: all of it is read before the exit is reported, so the epochs at
// the end of the file are not left behind.
TEST(WorkerAgentTest, ReportsBeyondOneReadArriveBeforeTheExit) {
  FakeCoordinator fake(/*failures=*/0);
  std::string reports;
  int64_t step = 0;
  while (reports.size() < (size_t{7} << 19)) reports += Report(0, ++step);
  reports += Report(1, 0) + Report(2, 0);
  ASSERT_GT(reports.size(), size_t{3} << 20);
  RunRankThatReports(fake, reports);
  EXPECT_EQ(fake.epochs_at_exit(), (std::vector<int>{1, 2}));
  EXPECT_EQ(fake.last_step(), step);
}

// Starts job-1's rank, and once it runs, tells the worker to forget job-1
// (its rank still there), job-0 (none here) and two names that are no plain
// file name.
class ForgettingCoordinator final : public RegisteringCoordinator {
 public:
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override {
    absl::MutexLock lock(&mu_);
    ++beats_;
    if (AssignOnce(resp)) return grpc::Status::OK;
    const bool running = req->ranks_size() == 1 && req->ranks(0).running();
    if (running && !told_) {
      told_ = true;
      for (const char* id : {"job-1", "job-0", "..", "../outside"}) resp->add_forget_jobs(id);
    }
    return grpc::Status::OK;
  }
  std::pair<bool, int> told_and_beats() {
    absl::MutexLock lock(&mu_);
    return {told_, beats_};
  }

 private:
  absl::Mutex mu_;
  bool told_ = false;
  int beats_ = 0;
};

using testing::WaitUntil;

// A deleted job's rank folders: removed at once where no rank of it is
// left, kept while one is (and removed once it has gone), and nothing
// outside the work dir is touched whatever the name.
TEST(WorkerAgentTest, ADeletedJobsFoldersGoOnceItsRanksHaveGoneAndNothingOutsideTheWorkDir) {
  testing::TempDir dir;
  const std::string work = dir.Join("work");
  testing::WriteFileOrDie(work + "/job-0/attempt-1/rank-0/log", "an old job's log\n");
  testing::WriteFileOrDie(dir.Join("outside/keep"), "not the worker's\n");
  const std::string script = dir.Join("rank.sh");
  testing::WriteFileOrDie(script, "#!/bin/sh\nwhile [ ! -e '" + dir.Join("release") + "' ]; do sleep 0.05; done\n");
  ASSERT_EQ(::chmod(script.c_str(), 0755), 0);
  ForgettingCoordinator fake;
  namespace fs = std::filesystem;
  WhileAWorkerRuns(fake, script, work, [&] {
    EXPECT_TRUE(WaitUntil([&] { return !fs::exists(work + "/job-0"); }, std::chrono::seconds(20)))
        << "job-0's folders were kept";
    const auto [told, beats] = fake.told_and_beats();
    EXPECT_TRUE(told);
    EXPECT_TRUE(WaitUntil([&, beats = beats] { return fake.told_and_beats().second >= beats + 5; },
                          std::chrono::seconds(20)));
    EXPECT_TRUE(fs::exists(work + "/job-1/attempt-1/rank-0")) << "removed under its running rank";
    testing::WriteFileOrDie(dir.Join("release"), "");
    EXPECT_TRUE(WaitUntil([&] { return !fs::exists(work + "/job-1"); }, std::chrono::seconds(20)))
        << "job-1's folders were kept after its rank had gone";
  });
  EXPECT_TRUE(fs::exists(dir.Join("outside/keep")));
  EXPECT_TRUE(fs::is_directory(work));
}

// Names the job folders the worker holds when it registers, and answers
// that job-old was deleted (while the worker was away).
class RememberingCoordinator final : public RegisteringCoordinator {
 public:
  grpc::Status RegisterWorker(grpc::ServerContext* ctx, const v1::RegisterWorkerRequest* req,
                              v1::RegisterWorkerResponse* resp) override {
    RegisteringCoordinator::RegisterWorker(ctx, req, resp);
    {
      absl::MutexLock lock(&mu_);
      held_.assign(req->held_jobs().begin(), req->held_jobs().end());
    }
    resp->add_forget_jobs("job-old");
    resp->add_forget_jobs("..");
    return grpc::Status::OK;
  }
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest*, v1::HeartbeatResponse*) override {
    return grpc::Status::OK;
  }
  std::vector<std::string> held() {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> sorted = held_;
    std::sort(sorted.begin(), sorted.end());
    return sorted;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> held_ ABSL_GUARDED_BY(mu_);
};

TEST(WorkerAgentTest, FoldersOfAJobDeletedWhileTheWorkerWasAwayGoWhenItRegisters) {
  testing::TempDir dir;
  const std::string work = dir.Join("work");
  testing::WriteFileOrDie(work + "/job-old/attempt-1/rank-0/log", "a deleted job's log\n");
  testing::WriteFileOrDie(work + "/job-live/attempt-1/rank-0/log", "a job's log\n");
  testing::WriteFileOrDie(work + "/notes", "not a job's folder\n");
  std::filesystem::create_directories(work + "/.hidden");
  RememberingCoordinator fake;
  namespace fs = std::filesystem;
  WhileAWorkerRuns(fake, "/bin/true", work, [&] {
    EXPECT_TRUE(WaitUntil([&] { return !fs::exists(work + "/job-old"); }, std::chrono::seconds(20)))
        << "job-old's folders were kept";
  });
  EXPECT_EQ(fake.held(), (std::vector<std::string>{"job-live", "job-old"}));
  EXPECT_TRUE(fs::exists(work + "/job-live/attempt-1/rank-0/log"));
  EXPECT_TRUE(fs::exists(work + "/notes"));
  EXPECT_TRUE(fs::is_directory(work + "/.hidden"));
}

// Starts job-1's rank on a worker of one GPU, and once it runs, job-2's
// too (as a coordinator that counted a stopping rank's slot free did);
// notes how job-2's rank ended.
class OverplacingCoordinator final : public RegisteringCoordinator {
 public:
  grpc::Status Heartbeat(grpc::ServerContext*, const v1::HeartbeatRequest* req,
                         v1::HeartbeatResponse* resp) override {
    absl::MutexLock lock(&mu_);
    if (AssignOnce(resp)) return grpc::Status::OK;
    for (const v1::RankStatus& r : req->ranks()) {
      if (r.job_id() == "job-1" && r.running() && !second_sent_) {
        second_sent_ = true;
        v1::RankAssignment* a = resp->add_start();
        a->set_job_id("job-2");
        a->set_attempt(1);
        a->set_rank(0);
        a->set_world_size(1);
      }
      if (r.job_id() == "job-2" && r.exited()) {
        second_exited_ = true;
        second_code_ = r.exit_code();
        second_error_ = r.error();
      }
    }
    return grpc::Status::OK;
  }
  bool second_exited() {
    absl::MutexLock lock(&mu_);
    return second_exited_;
  }
  std::pair<int, std::string> second_exit() {
    absl::MutexLock lock(&mu_);
    return {second_code_, second_error_};
  }

 private:
  absl::Mutex mu_;
  bool second_sent_ = false, second_exited_ = false;
  int second_code_ = 0;
  std::string second_error_;
};

// A GPU worker given more ranks than it has free GPUs used to start the
// extra rank with no GPU (CUDA_VISIBLE_DEVICES empty): a CUDA build trained
// it on the CPU, tens of times slower, or failed its NCCL peers. It is now
// not started, and reported as ended with a transient error naming the rank
// that holds the GPU, so its job is restarted once that one has gone.
TEST(WorkerAgentTest, ARankForWhichNoGpuIsFreeIsNotStartedAndSaysWhichRankHoldsIt) {
  testing::TempDir dir;
  const std::string work = dir.Join("work");
  const std::string script = dir.Join("rank.sh");
  testing::WriteFileOrDie(script, "#!/bin/sh\nprintf '%s' \"$CUDA_VISIBLE_DEVICES\" > \"$DFC_RANK_DIR/gpu\"\n"
                                  "while [ ! -e '" + dir.Join("release") + "' ]; do sleep 0.05; done\n");
  ASSERT_EQ(::chmod(script.c_str(), 0755), 0);
  OverplacingCoordinator fake;
  namespace fs = std::filesystem;
  WhileAWorkerRuns(
      fake, script, work,
      [&] {
        EXPECT_TRUE(WaitUntil([&] { return fake.second_exited(); }, std::chrono::seconds(20)))
            << "job-2's rank was never reported as ended";
        const auto [code, error] = fake.second_exit();
        EXPECT_EQ(code, 127);
        EXPECT_EQ(error, "no free GPU on this worker: its 1 are held by job-1 attempt 1 rank 0; the rank was not started");
        ASSERT_TRUE(WaitUntil([&] { return fs::exists(work + "/job-1/attempt-1/rank-0/gpu"); },
                              std::chrono::seconds(20)));
        EXPECT_EQ(testing::ReadFileOrDie(work + "/job-1/attempt-1/rank-0/gpu"), "0");
        EXPECT_FALSE(fs::exists(work + "/job-2/attempt-1/rank-0/gpu")) << "job-2's rank ran without a GPU";
        testing::WriteFileOrDie(dir.Join("release"), "");
      },
      /*gpus=*/1);
}

// A rank's CUDA_VISIBLE_DEVICES: none on a CPU slot; on a GPU, that GPU as
// the worker sees it, so a worker limited to some GPUs keeps its ranks there.
TEST(WorkerAgentTest, ARankSeesOnlyItsOwnGpuAsTheWorkerNumbersIt) {
  EXPECT_EQ(RankCudaDevices(-1, nullptr), "");
  EXPECT_EQ(RankCudaDevices(-1, "2,3"), "");
  EXPECT_EQ(RankCudaDevices(1, nullptr), "1");
  EXPECT_EQ(RankCudaDevices(1, ""), "1");
  EXPECT_EQ(RankCudaDevices(0, "2,3"), "2");
  EXPECT_EQ(RankCudaDevices(1, "2, 3"), "3");
  EXPECT_EQ(RankCudaDevices(1, "GPU-8a1f,MIG-4c2e"), "MIG-4c2e");
}

}  // namespace
}  // namespace dfc
