// The cluster as users run it: dfc-coordinator, dfc-worker and dfc as
// separate processes on loopback, with real SQLite state and Gloo ranks.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include "absl/cleanup/cleanup.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

#include "common/checksum.h"
#include "common/cpus.h"
#include "common/dir_lock.h"
#include "common/rpc/rpc_util.h"
#include "common/subprocess.h"
#include "data_shards/shard_format.h"
#include "tests/test_cluster.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

using testing::RunCommand;

using testing::Bin;
using testing::ProcStrings;
// A coordinator and N workers (tests/test_cluster.h).
using Cluster = testing::TestCluster;

// The cluster with one evaluation server too.
Cluster::Options WithServer(int workers) {
  Cluster::Options o;
  o.workers = workers;
  o.servers = 1;
  return o;
}

std::string JsonString(const std::string& json, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(json, m, std::regex("\"" + key + "\":\"([^\"]*)\""))) return "";
  return m[1];
}

int JsonInt(const std::string& json, const std::string& key) {
  std::smatch m;
  if (!std::regex_search(json, m, std::regex("\"" + key + "\":([0-9]+)"))) return -1;
  return std::stoi(m[1]);
}

int CountEpochs(const std::string& status_json) {
  static const std::regex kEpoch("\"val_auc\"");
  int n = 0;
  for (std::sregex_iterator it(status_json.begin(), status_json.end(), kEpoch), end; it != end; ++it) ++n;
  return n;
}

std::string WaitForState(Cluster& c, const std::string& job, const std::string& state, int seconds) {
  std::string json;
  for (int i = 0; i < seconds * 10; ++i) {
    json = RunCommand(c.Dfc("status --json " + job)).out;
    if (JsonString(json, "state") == state) return json;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return json;
}

// Submits a job on `images` synthetic images with `flags` (one thread per
// rank) and waits until its first epoch is recorded; returns its id, or ""
// with *status saying why.
std::string SubmitAndWaitForAnEpoch(Cluster& c, int images, const std::string& flags, std::string* status) {
  const std::string shards = testing::SyntheticShards(c.dir(), images);
  auto r = RunCommand(c.Dfc("submit --json --threads 1 --data " + shards + " " + flags));
  if (r.exit_code != 0) {
    *status = r.err;
    return "";
  }
  const std::string job = JsonString(r.out, "job_id");
  const bool trained = testing::WaitUntil(
      [&] { return CountEpochs(*status = RunCommand(c.Dfc("status --json " + job)).out) >= 1; },
      std::chrono::seconds(240));
  return trained ? job : "";
}

// A one-epoch meso4 job on `shards`, run to its end: its id once it
// SUCCEEDED, else "" (*status says why: the submit's error or its last status).
std::string OneEpochThatSucceeded(Cluster& c, const std::string& shards, std::string* status) {
  auto r = RunCommand(c.Dfc("submit --json --model meso4 --data " + shards + " --epochs 1 --threads 1"));
  if (r.exit_code != 0) {
    *status = r.err;
    return "";
  }
  const std::string job = JsonString(r.out, "job_id");
  *status = WaitForState(c, job, "SUCCEEDED", 240);
  return JsonString(*status, "state") == "SUCCEEDED" ? job : "";
}

TEST(ClusterTest, EndToEndJobSucceedsAndItsCheckpointPredicts) {
  Cluster c(WithServer(2));
  const std::string shards = testing::SyntheticShards(c.dir(), 48);
  auto submit = c.Dfc("submit --json --model mesoinception4 --data " + shards +
                      " --world-size 2 --epochs 2 --batch-size 12 --bn-momentum 0.9");
  auto r = RunCommand(submit);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string job = JsonString(r.out, "job_id");
  ASSERT_FALSE(job.empty()) << r.out;
  auto watch = RunCommand(c.Dfc("watch --timeout 240 " + job));
  EXPECT_EQ(watch.exit_code, 0) << watch.out << watch.err;
  EXPECT_NE(watch.out.find("SUCCEEDED"), std::string::npos) << watch.out;
  auto status = RunCommand(c.Dfc("status --json " + job));
  ASSERT_EQ(status.exit_code, 0) << status.err;
  EXPECT_EQ(JsonString(status.out, "state"), "SUCCEEDED");
  EXPECT_EQ(JsonInt(status.out, "restarts"), 0);
  EXPECT_EQ(CountEpochs(status.out), 2) << status.out;
  // Each rank's output, through the coordinator from the worker that ran it.
  for (int rank : {0, 1}) {
    auto logs = RunCommand(c.Dfc("logs " + job + " --rank " + std::to_string(rank)));
    ASSERT_EQ(logs.exit_code, 0) << logs.err;
    EXPECT_NE(logs.out.find("rank " + std::to_string(rank) + " of 2: job " + job + " attempt 1"), std::string::npos)
        << logs.out;
    EXPECT_NE(logs.out.find("rank " + std::to_string(rank) + ": epoch 2  loss"), std::string::npos) << logs.out;
  }
  auto tail = RunCommand(c.Dfc("logs " + job + " --rank 1 --tail 1"));
  ASSERT_EQ(tail.exit_code, 0) << tail.err;
  EXPECT_EQ(testing::SplitLines(tail.out).size(), 1u) << tail.out;
  EXPECT_NE(tail.out.find("rank 1: epoch 2"), std::string::npos) << tail.out;
  auto follow = RunCommand(c.Dfc("logs " + job + " --follow"));  // the job has ended: returns
  EXPECT_EQ(follow.exit_code, 0) << follow.err;
  auto no_rank = RunCommand(c.Dfc("logs " + job + " --rank 5"));
  EXPECT_EQ(no_rank.exit_code, 2) << no_rank.err;
  EXPECT_NE(no_rank.err.find("has ranks 0..1"), std::string::npos) << no_rank.err;
  const std::string out_dir = JsonString(status.out, "output_dir");
  auto predict = RunCommand(testing::DfcBinary() + " predict --model mesoinception4 --weights " + out_dir +
                            "/latest.ckpt " + c.dir().Join("syn/df/000000.jpg"));
  EXPECT_EQ(predict.exit_code, 0) << predict.err;
  // Evaluating a checkpoint on the validation split through the Evaluate
  // stream reports the accuracy training reported for that epoch.
  const auto epochs = nlohmann::json::parse(status.out)["epochs"];
  for (const std::string checkpoint : {"best", "latest", "1"}) {
    auto eval = RunCommand(c.Dfc("evaluate --json --job " + job + " --checkpoint " + checkpoint +
                                 " --validation-split 0.25 " + c.dir().Join("syn")));
    ASSERT_EQ(eval.exit_code, 0) << eval.err;
    auto summary = nlohmann::json::parse(eval.out);
    const int epoch = summary["model"]["epoch"].get<int>();
    ASSERT_GE(epoch, 1) << eval.out;
    ASSERT_LE(epoch, static_cast<int>(epochs.size())) << eval.out;
    EXPECT_EQ(summary["count"], 12) << eval.out;
    EXPECT_EQ(summary["errors"], 0) << eval.out;
    EXPECT_NEAR(summary["accuracy"].get<double>(), epochs[epoch - 1]["val_accuracy"].get<double>(), 1e-9)
        << checkpoint << " (epoch " << epoch << "): " << eval.out;
    EXPECT_NEAR(summary["auc"].get<double>(), epochs[epoch - 1]["val_auc"].get<double>(), 1e-6) << eval.out;
  }
  auto missing = RunCommand(c.Dfc("evaluate --job " + job + " --checkpoint 99 " + c.dir().Join("syn")));
  EXPECT_EQ(missing.exit_code, 2) << missing.err;
  EXPECT_NE(missing.err.find("no checkpoint of epoch 99"), std::string::npos) << missing.err;
  // A retried submit with the same key is the same job.
  auto a = RunCommand(submit + " --idempotency-key k1");
  auto b = RunCommand(submit + " --idempotency-key k1");
  EXPECT_EQ(JsonString(a.out, "job_id"), JsonString(b.out, "job_id"));
  EXPECT_NE(b.out.find("\"existing\":true"), std::string::npos) << b.out;
  auto cancel = RunCommand(c.Dfc("cancel " + JsonString(a.out, "job_id")));
  EXPECT_EQ(cancel.exit_code, 0) << cancel.err;
}

TEST(ClusterTest, BadRequestsNameTheFieldAndCreateNothing) {
  Cluster c(1);
  const std::string shards = testing::SyntheticShards(c.dir(), 8);
  struct Case {
    std::string args, field;
  };
  for (const Case& bad : std::vector<Case>{{"--model vgg --data " + shards, "config.model"},
                                           {"--data " + c.dir().Join("missing"), "config.data"},
                                           {"--data " + shards + " --world-size 0", "world_size"},
                                           {"--data " + shards + " --batch-size 100000", "config.batch_size"},
                                           {"--data " + shards + " --epochs -3", "config.epochs"},
                                           {"--data " + shards + " --world-size 2 --cuda-graphs on",
                                            "config.cuda_graphs (--cuda-graphs): on needs world_size 1, got 2"}}) {
    auto r = RunCommand(c.Dfc("submit " + bad.args));
    EXPECT_EQ(r.exit_code, 2) << bad.args << ": " << r.err;
    EXPECT_NE(r.err.find(bad.field), std::string::npos) << bad.args << ": " << r.err;
  }
  auto unknown = RunCommand(c.Dfc("status job-000000000000"));
  EXPECT_EQ(unknown.exit_code, 2);
  EXPECT_NE(unknown.err.find("job_id"), std::string::npos) << unknown.err;
  // An error quoting a 50,000-byte id arrives cut, not as a metadata-limit error.
  auto huge = RunCommand(c.Dfc("status " + std::string(50000, 'j')));
  EXPECT_EQ(huge.exit_code, 2) << huge.err.substr(0, 300);
  EXPECT_NE(huge.err.find("job_id: no job 'jjjj"), std::string::npos) << huge.err.substr(0, 300);
  EXPECT_NE(huge.err.find("... (47"), std::string::npos) << huge.err.substr(0, 300);
  EXPECT_LT(huge.err.size(), 2200u);
  auto list = RunCommand(c.Dfc("list --json"));
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_EQ(list.out.find("job_id"), std::string::npos) << "a bad request left a job: " << list.out;
  auto down = RunCommand(testing::DfcBinary() + " --coordinator 127.0.0.1:1 list");
  EXPECT_EQ(down.exit_code, 6) << down.err;
}

TEST(ClusterTest, KilledWorkerRestartsTheJobFromItsCheckpoint) {
  Cluster c(3);  // two for the job, one spare
  const std::string shards = testing::SyntheticShards(c.dir(), 480);
  auto r = RunCommand(c.Dfc("submit --json --model mesoinception4 --data " + shards +
                            " --world-size 2 --epochs 3 --batch-size 16 --bn-momentum 0.9 --max-restarts 2 --threads 1"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string job = JsonString(r.out, "job_id");
  // Wait for the first epoch's checkpoint, then kill rank 1's worker.
  std::string status;
  for (int i = 0; i < 1800 && CountEpochs(status) < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = RunCommand(c.Dfc("status --json " + job)).out;
  }
  ASSERT_GE(CountEpochs(status), 1) << status;
  const std::string out_dir = JsonString(status, "output_dir");
  const std::string first_epoch = testing::SplitLines(testing::ReadFileOrDie(out_dir + "/metrics.jsonl"))[0];
  const pid_t victim = c.WorkerOf(job, 1);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  const auto killed_at = std::chrono::steady_clock::now();
  auto watch = RunCommand(c.Dfc("watch --timeout 400 " + job));
  EXPECT_EQ(watch.exit_code, 0) << watch.out << watch.err;
  auto final_status = RunCommand(c.Dfc("status --json " + job)).out;
  EXPECT_EQ(JsonString(final_status, "state"), "SUCCEEDED") << final_status;
  EXPECT_EQ(JsonInt(final_status, "restarts"), 1) << final_status;
  EXPECT_EQ(CountEpochs(final_status), 3) << final_status;
  // Resumed, not restarted from scratch: epoch 1 was not trained again.
  auto lines = testing::SplitLines(testing::ReadFileOrDie(out_dir + "/metrics.jsonl"));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], first_epoch);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - killed_at).count(), 400);
}

// --recipe notebook through the cluster: its worker is killed while the
// epoch count is being selected; the restart resumes the selection from its
// checkpoint instead of starting over, then retrains. The job's record, `dfc
// watch` and `dfc status` keep the two phases' epochs apart.
TEST(ClusterTest, NotebookJobKilledWhileSelectingResumesAndReportsBothPhases) {
  Cluster c(2);  // one for the job, one spare
  const std::string shards = testing::SyntheticShards(c.dir(), 320);
  auto r = RunCommand(c.Dfc("submit --json --model mesoinception4 --data " + shards +
                            " --recipe notebook --epochs 3 --batch-size 16 --bn-momentum 0.9 --max-restarts 2"
                            " --threads 1"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string job = JsonString(r.out, "job_id");
  nlohmann::json status;
  auto selected = [&status] {
    return status.is_object() && status.contains("selection_epochs") ? status["selection_epochs"].size() : 0;
  };
  for (int i = 0; i < 1800 && selected() < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = nlohmann::json::parse(RunCommand(c.Dfc("status --json " + job)).out, nullptr, false);
  }
  ASSERT_GE(selected(), 1u) << status.dump();
  ASSERT_TRUE(status["epochs"].empty()) << "a selection epoch was recorded as the run's: " << status.dump();
  const std::string listed = RunCommand(c.Dfc("list")).out;
  EXPECT_TRUE(std::regex_search(listed, std::regex(job + " +RUNNING +mesoinception4 +1 +0 +[1-3] sel +-\n"))) << listed;
  const std::string out_dir = status["output_dir"];
  const std::string first_epoch = testing::SplitLines(testing::ReadFileOrDie(out_dir + "/selection/metrics.jsonl"))[0];
  const pid_t victim = c.WorkerOf(job, 0);
  ASSERT_GT(victim, 0);
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  auto watch = RunCommand(c.Dfc("watch --timeout 400 " + job));
  EXPECT_EQ(watch.exit_code, 0) << watch.out << watch.err;
  EXPECT_NE(watch.out.find("selection epoch 1/3  loss"), std::string::npos) << watch.out;
  EXPECT_NE(watch.out.find("selection epoch 3/3  loss"), std::string::npos) << watch.out;
  EXPECT_NE(watch.out.find("\nepoch 1"), std::string::npos) << watch.out;
  const nlohmann::json done = nlohmann::json::parse(RunCommand(c.Dfc("status --json " + job)).out, nullptr, false);
  ASSERT_TRUE(done.is_object());
  EXPECT_EQ(done["state"], "SUCCEEDED") << done.dump();
  EXPECT_EQ(done["restarts"], 1) << done.dump();
  ASSERT_EQ(done["selection_epochs"].size(), 3u) << done.dump();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(done["selection_epochs"][i]["epoch"], i + 1);
    EXPECT_EQ(done["selection_epochs"][i]["phase"], "selection");
  }
  // Resumed, not started over: the selection's epoch 1 was not trained again.
  const auto selection_lines = testing::SplitLines(testing::ReadFileOrDie(out_dir + "/selection/metrics.jsonl"));
  ASSERT_EQ(selection_lines.size(), 3u);
  EXPECT_EQ(selection_lines[0], first_epoch);
  // The retraining ran for the chosen count, recorded as the job's epochs.
  const auto run_lines = testing::SplitLines(testing::ReadFileOrDie(out_dir + "/metrics.jsonl"));
  ASSERT_GE(run_lines.size(), 1u);
  ASSERT_EQ(done["epochs"].size(), run_lines.size()) << done.dump();
  for (const auto& e : done["epochs"]) EXPECT_EQ(e["phase"], "") << e.dump();
  const std::string text = RunCommand(c.Dfc("status " + job)).out;
  EXPECT_NE(text.find("\nselection epoch 3  loss"), std::string::npos) << text;
  EXPECT_NE(text.find("\nepoch 1  loss"), std::string::npos) << text;
}

TEST(ClusterTest, KilledCoordinatorLosesNoJob) {
  Cluster c(2);
  const std::string shards = testing::SyntheticShards(c.dir(), 96);
  const std::string args = "submit --json --model mesoinception4 --data " + shards +
                           " --world-size 2 --epochs 2 --batch-size 16 --bn-momentum 0.9 --threads 1";
  auto a = RunCommand(c.Dfc(args));
  auto b = RunCommand(c.Dfc(args));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  ASSERT_EQ(b.exit_code, 0) << b.err;
  const std::string ja = JsonString(a.out, "job_id"), jb = JsonString(b.out, "job_id");
  WaitForState(c, ja, "RUNNING", 60);
  EXPECT_EQ(JsonString(RunCommand(c.Dfc("status --json " + jb)).out, "state"), "QUEUED");
  // A watch that is running when the coordinator dies reconnects to the new one.
  Subprocess& watcher = c.processes().Start({testing::DfcBinary(), "--coordinator", c.address(), "watch", "--timeout",
                                            "400", ja}, "watch.log");
  // Only once it is connected (it printed the job's state): dfc starts slowly on a busy machine.
  for (int i = 0; i < 300 && c.processes().Log("watch.log").find("RUNNING") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  c.KillCoordinator();
  c.StartCoordinator();
  for (const std::string& job : {ja, jb}) {
    auto watch = RunCommand(c.Dfc("watch --timeout 400 " + job));
    EXPECT_EQ(watch.exit_code, 0) << job << ": " << watch.out << watch.err;
    EXPECT_EQ(JsonString(RunCommand(c.Dfc("status --json " + job)).out, "state"), "SUCCEEDED");
  }
  const int watch_exit = watcher.Wait();
  const std::string watch_log = testing::ReadFileOrDie(c.dir().Join("watch.log"));
  EXPECT_EQ(watch_exit, 0) << watch_log;
  EXPECT_NE(watch_log.find("reconnecting"), std::string::npos) << watch_log;
  EXPECT_NE(watch_log.find("SUCCEEDED"), std::string::npos) << watch_log;
}

// The coordinator is killed and started again while a job trains on two
// workers: the ranks train on meanwhile, the workers register again naming
// them, and the job keeps its attempt and its rank processes, which report
// their next epochs to the new coordinator. No restart, no epoch trained again.
TEST(ClusterTest, ARunningJobKeepsItsRanksThroughACoordinatorRestart) {
  Cluster c(2);
  std::string status;
  const std::string job = SubmitAndWaitForAnEpoch(
      c, 64, "--model mesoinception4 --world-size 2 --epochs 50 --batch-size 16 --bn-momentum 0.9", &status);
  ASSERT_FALSE(job.empty()) << status;
  const pid_t rank0 = c.RankPid(job, 1, 0), rank1 = c.RankPid(job, 1, 1);
  ASSERT_GT(rank0, 0);
  ASSERT_GT(rank1, 0);
  const auto workers = nlohmann::json::parse(status)["workers"];
  // A user following rank 0's log through the restart.
  Subprocess& follow = c.processes().Start(
      {"/bin/sh", "-c", c.Dfc("logs --follow --rank 0 " + job) + " 2>" + c.dir().Join("follow.err")}, "follow.out");
  ASSERT_TRUE(testing::WaitUntil([&] { return !c.processes().Log("follow.out").empty(); }, std::chrono::seconds(30)));
  const size_t logged_before = testing::ReadFileOrDie(c.RankLog(job, 1, 0)).size();
  c.KillCoordinator();
  std::this_thread::sleep_for(std::chrono::seconds(3));  // the ranks train on
  const auto started = std::chrono::steady_clock::now();
  c.StartCoordinator();
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        status = RunCommand(c.Dfc("status --json " + job)).out;
        return status.find("\"reattached\"") != std::string::npos || JsonString(status, "state") != "RUNNING";
      },
      std::chrono::seconds(60)))
      << status << c.processes().Log("coordinator.log");
  std::fprintf(stderr, "the ranks were reported back %.1f s after the coordinator started\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
  auto j = nlohmann::json::parse(status);
  EXPECT_EQ(j["state"], "RUNNING") << j.dump();
  EXPECT_EQ(j.value("attempt", 0), 1) << "the job was restarted: " << j.dump();
  EXPECT_EQ(j.value("restarts", 0), 0) << j.dump();
  std::string kinds;
  for (const auto& e : j["events"]) kinds += e["kind"].get<std::string>() + " ";
  EXPECT_NE(kinds.find("running reattaching reattached"), std::string::npos) << kinds;
  EXPECT_EQ(kinds.find("requeued"), std::string::npos) << kinds;
  // The workers registered again under the ids they had.
  EXPECT_EQ(j["workers"], workers) << j.dump();
  // The same processes train on and report to the new coordinator.
  EXPECT_EQ(::kill(rank0, 0), 0);
  EXPECT_EQ(::kill(rank1, 0), 0);
  const int epochs = CountEpochs(status);
  EXPECT_TRUE(testing::WaitUntil(
      [&] { return CountEpochs(status = RunCommand(c.Dfc("status --json " + job)).out) > epochs; },
      std::chrono::seconds(120)))
      << status;
  EXPECT_EQ(c.RankPid(job, 2, 0), -1) << "a second attempt was started";
  EXPECT_EQ(nlohmann::json::parse(status).value("attempt", 0), 1) << status;
  auto logs = RunCommand(c.Dfc("logs --rank 1 " + job));
  EXPECT_EQ(logs.exit_code, 0) << logs.err;
  EXPECT_EQ(RunCommand(c.Dfc("cancel " + job)).exit_code, 0);
  // The follower waited out the restart and went on where it was, to the
  // job's end: what it printed is the log, from its start, with what was
  // written after the restart.
  EXPECT_EQ(follow.Wait(), 0) << c.processes().Log("follow.err");
  const std::string followed = c.processes().Log("follow.out");
  const std::string rank_log = testing::ReadFileOrDie(c.RankLog(job, 1, 0));
  EXPECT_GT(followed.size(), logged_before);
  EXPECT_EQ(rank_log.substr(0, followed.size()), followed);
  const std::string said = c.processes().Log("follow.err");
  EXPECT_NE(said.find("dfc: the log cannot be read now ("), std::string::npos) << said;
  EXPECT_NE(said.find("); waiting\ndfc: the log is reachable again\n"), std::string::npos) << said;
}

// The job ends while the coordinator is down: its worker keeps the rank's
// exit until a coordinator takes it (a heartbeat answered "register again"
// took nothing), and the job ends SUCCEEDED as attempt 1, not restarted
// from its final checkpoint.
TEST(ClusterTest, AJobThatEndedWhileTheCoordinatorWasDownEndsAsItsOwnAttempt) {
  Cluster c(1);
  std::string status;
  const std::string job = SubmitAndWaitForAnEpoch(c, 48, "--model meso4 --epochs 3", &status);
  ASSERT_FALSE(job.empty()) << status;
  const pid_t rank = c.RankPid(job, 1, 0);
  ASSERT_GT(rank, 0);
  c.KillCoordinator();
  ASSERT_TRUE(testing::WaitUntil([&] { return ::kill(rank, 0) != 0; }, std::chrono::seconds(240)));
  c.StartCoordinator();
  auto watch = RunCommand(c.Dfc("watch --timeout 240 " + job));
  EXPECT_EQ(watch.exit_code, 0) << watch.out << watch.err;
  status = RunCommand(c.Dfc("status --json " + job)).out;
  EXPECT_EQ(JsonString(status, "state"), "SUCCEEDED") << status;
  EXPECT_EQ(nlohmann::json::parse(status).value("attempt", 0), 1) << status;
  EXPECT_EQ(CountEpochs(status), 3) << status;
  EXPECT_NE(status.find("\"reattached\""), std::string::npos) << status;
  EXPECT_EQ(status.find("\"requeued\""), std::string::npos) << status;
}

// A worker shut down with SIGTERM (a drain, an upgrade, a scale-down) while
// it runs rank 0 of a job with no restarts allowed: it tells the coordinator
// before it stops the rank, so the job goes back to the queue naming the
// shutdown (not failing on "Connection reset by peer" from the broken
// collective) and resumes from its checkpoint on the workers left.
// A proto JSON integer: int64 fields are strings there, and zeros are left out.
int64_t ProtoJsonInt(const nlohmann::json& j, const char* key) {
  if (!j.is_object() || !j.contains(key)) return 0;
  const auto& v = j[key];
  if (v.is_number_integer()) return v.get<int64_t>();
  int64_t n = 0;
  return v.is_string() && absl::SimpleAtoi(v.get<std::string>(), &n) ? n : 0;
}

// A worker shut down with SIGTERM in the middle of an epoch (a drain, a
// scale-down, a spot node reclaimed): its job goes back to the queue without
// counting a restart, its ranks finish the step they are in, agree, and rank
// 0 saves it; the next attempt, on the workers left, goes on from that step.
// The workers give their ranks 30 s to stop (--stop-grace), as a
// ResNet-50 step may need; the job is placed again as soon as the ranks
// have saved and the worker says so, not after the 30 s.
TEST(ClusterTest, AWorkerShutDownWithSigtermRequeuesItsJobsInsteadOfFailingThem) {
  Cluster::Options o;
  o.workers = 3;
  o.worker_flags = {"--cpu-slots", "1", "--stop-grace", "30"};
  Cluster c(o);
  std::string status;
  // 256 images: 192 to train on, 24 steps an epoch in global batches of 8.
  const std::string job = SubmitAndWaitForAnEpoch(
      c, 256, "--model mesoinception4 --world-size 2 --epochs 50 --batch-size 8 --bn-momentum 0.9 --max-restarts 0",
      &status);
  ASSERT_FALSE(job.empty()) << status;
  const std::string out_dir = JsonString(status, "output_dir");
  const std::string first_epoch = testing::SplitLines(testing::ReadFileOrDie(out_dir + "/metrics.jsonl"))[0];
  const int64_t steps = nlohmann::json::parse(first_epoch).value("step", int64_t{0});
  ASSERT_EQ(steps, 24) << first_epoch;
  // In the middle of an epoch, as its progress says (sent once a second).
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        status = RunCommand(c.Dfc("status --json " + job)).out;
        const auto p = nlohmann::json::parse(status, nullptr, false).value("progress", nlohmann::json::object());
        return ProtoJsonInt(p, "step") >= 1 && ProtoJsonInt(p, "step") <= steps - 12;
      },
      std::chrono::seconds(120)))
      << status;
  const pid_t pid = c.WorkerOf(job, 0);
  int w = -1;
  for (int i = 0; i < c.workers(); ++i) {
    if (c.worker(i).pid() == pid) w = i;
  }
  ASSERT_GE(w, 0);
  ASSERT_TRUE(c.worker(w).Signal(SIGTERM));
  EXPECT_EQ(c.worker(w).Wait(), 0);
  const std::string log = c.processes().Log("worker-" + std::to_string(w) + ".log");
  EXPECT_NE(log.find("shutting down: the coordinator put the jobs of its 1 running rank(s) back in the queue"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("its ranks have stopped; told the coordinator, so their jobs need not wait out the stop grace"),
            std::string::npos)
      << log;
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        status = RunCommand(c.Dfc("status --json " + job)).out;
        return JsonString(status, "state") != "RUNNING" || nlohmann::json::parse(status).value("attempt", 0) >= 2;
      },
      std::chrono::seconds(120)))
      << status;
  auto j = nlohmann::json::parse(status);
  ASSERT_NE(j["state"], "FAILED") << j.dump();
  EXPECT_EQ(j.value("restarts", 0), 0) << j.dump();
  ASSERT_GE(j["failures"].size(), 1u) << j.dump();
  EXPECT_NE(j["failures"][0]["reason"].get<std::string>().find("shut down (SIGTERM"), std::string::npos) << j.dump();
  // Attempt 2 runs on the two workers left, from the step the ranks saved.
  status = WaitForState(c, job, "RUNNING", 120);
  j = nlohmann::json::parse(status);
  EXPECT_EQ(j.value("attempt", 0), 2) << j.dump();
  int64_t requeued_ms = 0, placed_ms = 0;
  for (const auto& e : j["events"]) {
    if (e.value("kind", "") == "requeued") requeued_ms = ProtoJsonInt(e, "unix_ms");
    if (e.value("kind", "") == "scheduled" && e.value("attempt", 0) == 2) placed_ms = ProtoJsonInt(e, "unix_ms");
  }
  ASSERT_GT(requeued_ms, 0) << j.dump();
  std::printf("attempt 2 placed %lld ms after the requeue\n", static_cast<long long>(placed_ms - requeued_ms));
  EXPECT_LT(placed_ms - requeued_ms, 15000) << "the job waited out the leaving worker's 30 s stop grace: " << j.dump();
  const int epochs = CountEpochs(status);
  EXPECT_TRUE(testing::WaitUntil(
      [&] { return CountEpochs(status = RunCommand(c.Dfc("status --json " + job)).out) > epochs; },
      std::chrono::seconds(120)))
      << status;
  // Rank 1's worker stayed: its log of attempt 1 says where the ranks stopped.
  const std::string stopped_log = RunCommand(c.Dfc("logs --attempt 1 --rank 1 " + job)).out;
  std::smatch at;
  const std::regex stop_line("stopped as asked in epoch ([0-9]+) after step ([0-9]+) of ([0-9]+)");
  ASSERT_TRUE(std::regex_search(stopped_log, at, stop_line)) << stopped_log;
  const int stop_epoch = std::stoi(at[1]);
  const int64_t stop_step = std::stoll(at[2]);
  EXPECT_GE(stop_epoch, 2);
  EXPECT_GT(stop_step, 0) << stopped_log;
  EXPECT_LT(stop_step, steps) << stopped_log;
  EXPECT_EQ(std::stoll(at[3]), steps);
  const std::string resumed_log = RunCommand(c.Dfc("logs --attempt 2 --rank 0 " + job)).out;
  EXPECT_NE(resumed_log.find(absl::StrCat("resuming epoch ", stop_epoch, " after its step ", stop_step, " (", out_dir,
                                          "/interrupted.ckpt)")),
            std::string::npos)
      << resumed_log;
  // Resumed, neither started over nor from the epoch's start: each epoch is
  // in the file once, and the stopped one took exactly its 24 steps.
  const auto lines = testing::SplitLines(testing::ReadFileOrDie(out_dir + "/metrics.jsonl"));
  ASSERT_GE(lines.size(), static_cast<size_t>(stop_epoch));
  EXPECT_EQ(lines[0], first_epoch);
  for (size_t i = 0; i < lines.size(); ++i) {
    const auto line = nlohmann::json::parse(lines[i]);
    EXPECT_EQ(line["epoch"], i + 1) << lines[i];
    EXPECT_EQ(line["step"], static_cast<int64_t>(i + 1) * steps) << lines[i];
  }
  EXPECT_EQ(RunCommand(c.Dfc("cancel " + job)).exit_code, 0);
}

bool ProcessGone(pid_t pid) {
  // A zombie is gone too: its worker reaps it.
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const size_t close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

bool WaitGone(pid_t pid, int seconds) {
  for (int i = 0; i < seconds * 10 && !ProcessGone(pid); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  return ProcessGone(pid);
}

// A cancelled job's ranks save their step and exit within seconds, and the
// job queued behind it gets their slots only then: it used to be started in
// the very heartbeat that told the cancelled ranks to stop, beside them (on
// a GPU worker, with no GPU left for it).
TEST(ClusterTest, CancelStopsEveryRankWithinSecondsAndTheirSlotsAreGivenOnlyOnceTheyHaveGone) {
  Cluster c(2);
  const std::string shards = testing::SyntheticShards(c.dir(), 400);
  const std::string submit = "submit --json --model mesoinception4 --data " + shards + " --world-size 2 --batch-size 16 "
                             "--threads 1 --epochs ";
  auto r = RunCommand(c.Dfc(submit + "50"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string job = JsonString(r.out, "job_id");
  WaitForState(c, job, "RUNNING", 60);
  const pid_t ranks[] = {c.RankPid(job, 1, 0), c.RankPid(job, 1, 1)};
  ASSERT_GT(ranks[0], 0);
  ASSERT_GT(ranks[1], 0);
  auto next = RunCommand(c.Dfc(submit + "1"));
  ASSERT_EQ(next.exit_code, 0) << next.err;
  const std::string queued = JsonString(next.out, "job_id");
  EXPECT_EQ(JsonString(RunCommand(c.Dfc("status --json " + queued)).out, "state"), "QUEUED");
  const auto t0 = std::chrono::steady_clock::now();
  auto cancel = RunCommand(c.Dfc("cancel --json " + job));
  EXPECT_EQ(cancel.exit_code, 0) << cancel.err;
  EXPECT_EQ(JsonString(cancel.out, "state"), "CANCELLED");
  // When the cancelled ranks were last seen running, and when the next
  // job's first rank started (its start time in /proc): it comes after.
  auto ms = [&](std::chrono::steady_clock::time_point t) {
    return static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(t - t0).count());
  };
  std::chrono::steady_clock::time_point last_seen = t0;
  pid_t first = -1;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30)) {
    const auto now = std::chrono::steady_clock::now();
    const bool running = !ProcessGone(ranks[0]) || !ProcessGone(ranks[1]);
    if (running) last_seen = now;
    if (first < 0) first = std::max(c.RankPid(queued, 1, 0), c.RankPid(queued, 1, 1));
    if (!running && first > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(ProcessGone(ranks[0]) && ProcessGone(ranks[1])) << "ranks still running 30 s after cancel";
  EXPECT_LT(last_seen - t0, std::chrono::seconds(15)) << "ranks still running 15 s after cancel";
  ASSERT_GT(first, 0) << "the queued job was not placed within 30 s of the cancel";
  const auto started = testing::ProcessStartTime(first);
  ASSERT_TRUE(started.has_value());
  std::printf("cancelled ranks last seen running %lld ms after the cancel; the next job's rank started at %lld ms\n",
              ms(last_seen), ms(*started));
  // /proc's start time is in clock ticks (10 ms): a margin of two.
  EXPECT_GE(ms(*started), ms(last_seen) - 20) << "started beside a cancelled rank still running";
  // In the record: the next job was placed once a heartbeat after the one
  // that carried the stop reported the ranks gone (one interval: 200 ms),
  // not in the cancel itself.
  auto event_ms = [&](const std::string& id, const std::string& kind) -> int64_t {
    const nlohmann::json j = nlohmann::json::parse(RunCommand(c.Dfc("status --json " + id)).out, nullptr, false);
    if (j.is_object() && j.contains("events")) {
      for (const auto& e : j["events"]) {
        if (e.value("kind", "") == kind) return ProtoJsonInt(e, "unix_ms");
      }
    }
    return 0;
  };
  const int64_t cancelled_ms = event_ms(job, "cancelled"), placed_ms = event_ms(queued, "scheduled");
  ASSERT_GT(cancelled_ms, 0);
  ASSERT_GT(placed_ms, 0);
  std::printf("the next job was placed %lld ms after the cancel\n", static_cast<long long>(placed_ms - cancelled_ms));
  EXPECT_GE(placed_ms - cancelled_ms, 150) << "placed before the cancelled ranks' worker could report them gone";
  auto watch = RunCommand(c.Dfc("watch " + job));
  EXPECT_EQ(watch.exit_code, 5);
  EXPECT_EQ(RunCommand(c.Dfc("cancel " + queued)).exit_code, 0);
}

// Waits until the job reports step progress (its ranks are training).
void WaitForSteps(Cluster& c, const std::string& job, int seconds) {
  for (int i = 0; i < seconds * 10; ++i) {
    const std::string json = RunCommand(c.Dfc("status --json " + job)).out;
    if (std::regex_search(json, std::regex("\"step\":\"?[1-9]"))) return;  // int64: a JSON string
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// Submits a MesoInception-4 job on `images` synthetic images with `flags`
// (one decode thread) and waits until its ranks train; returns its id.
std::string SubmitAndWaitForSteps(Cluster& c, int images, const std::string& flags) {
  const std::string shards = testing::SyntheticShards(c.dir(), images);
  auto r = RunCommand(c.Dfc("submit --json --model mesoinception4 --threads 1 --data " + shards + " " + flags));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const std::string job = JsonString(r.out, "job_id");
  WaitForState(c, job, "RUNNING", 60);
  WaitForSteps(c, job, 120);
  return job;
}

// Submits a long job (`world` ranks, 50 epochs, plus `extra` flags), waits
// until it trains, then SIGSTOPs its attempt-1 rank `rank`: the hang a
// SIGKILL test never shows (alive, holding its slot, answering nothing).
struct StoppedRank {
  std::string job;
  pid_t pid = -1;
};
StoppedRank SubmitAndStopRank(Cluster& c, int world, const std::string& extra, int rank) {
  StoppedRank s;
  s.job = SubmitAndWaitForSteps(c, 400,
                                "--world-size " + std::to_string(world) + " --epochs 50 --batch-size 16 " + extra);
  s.pid = c.RankPid(s.job, 1, rank);
  if (s.pid > 0) {
    EXPECT_EQ(::kill(s.pid, SIGSTOP), 0);
  }
  return s;
}

// World size 1 has no peer whose collective would time out; the worker's
// hang detection must end a stopped rank.
TEST(ClusterTest, StoppedRankAtWorldSizeOneIsKilledAndTheJobFailsWithTheReason) {
  Cluster c(1);
  const auto [job, rank] = SubmitAndStopRank(c, 1, "--hang-timeout 4 --max-restarts 0", 0);
  ASSERT_GT(rank, 0);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string json = WaitForState(c, job, "FAILED", 30);
  EXPECT_EQ(JsonString(json, "state"), "FAILED") << json;
  EXPECT_NE(JsonString(json, "reason").find("no step progress for 4 s"), std::string::npos) << json;
  std::printf("reason: %s\n", JsonString(json, "reason").c_str());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
  EXPECT_TRUE(WaitGone(rank, 10)) << "the stopped rank is still there";
}

std::string RendezvousKeyOf(pid_t pid) {
  for (const std::string& e : ProcStrings(pid, "environ")) {
    if (e.rfind("DFC_RENDEZVOUS_KEY=", 0) == 0) return e.substr(e.find('=') + 1);
  }
  return "";
}

// The rendezvous key of a rank: in its environment, the same for all ranks of
// an attempt, new for each attempt, and not on its command line (in the
// assignment there, which any local user can read).
void ExpectRendezvousKey(pid_t pid, const std::string& key) {
  SCOPED_TRACE("pid " + std::to_string(pid));
  EXPECT_EQ(RendezvousKeyOf(pid), key);
  const auto argv = ProcStrings(pid, "cmdline");
  const auto flag = std::find(argv.begin(), argv.end(), "--assignment");
  ASSERT_TRUE(flag != argv.end() && flag + 1 != argv.end()) << "no --assignment";
  std::string assignment;
  ASSERT_TRUE(absl::Base64Unescape(*(flag + 1), &assignment));
  EXPECT_EQ(assignment.find(key), std::string::npos) << "the key is on the command line";
  for (const std::string& arg : argv) EXPECT_EQ(arg.find(key), std::string::npos) << arg;
}

// World size 2, one rank stopped: the attempt fails (hang or its peer's
// collective timeout), the job restarts, and the stop of the old attempt
// does not kill the new attempt's ranks on the same workers. The stopped
// rank could not rejoin the new attempt's rendezvous if it woke: each attempt
// has its own key.
TEST(ClusterTest, StoppedRankAtWorldSizeTwoRestartsAndTheNewAttemptSurvives) {
  Cluster c(2);
  const auto [job, victim] = SubmitAndStopRank(c, 2, "--hang-timeout 4 --max-restarts 2", 1);
  ASSERT_GT(victim, 0);
  const std::string old_key = RendezvousKeyOf(victim);
  ASSERT_EQ(old_key.size(), 32u) << "attempt 1 rank 1 has no rendezvous key";
  ExpectRendezvousKey(victim, old_key);
  // Attempt 2 starts and runs; it must still be running (not restarting
  // again) a while later.
  pid_t fresh = -1;
  for (int i = 0; i < 400 && fresh < 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    fresh = c.RankPid(job, 2, 1);
  }
  ASSERT_GT(fresh, 0) << "no second attempt within 40 s";
  EXPECT_TRUE(WaitGone(victim, 15)) << "the stopped rank of attempt 1 is still there";
  WaitForState(c, job, "RUNNING", 60);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  const std::string json = RunCommand(c.Dfc("status --json " + job)).out;
  EXPECT_EQ(JsonString(json, "state"), "RUNNING") << json;
  EXPECT_EQ(JsonInt(json, "attempt"), 2) << json;
  EXPECT_EQ(JsonInt(json, "restarts"), 1) << json;
  EXPECT_FALSE(ProcessGone(fresh)) << "the new attempt's rank was killed";
  const auto failures = nlohmann::json::parse(json)["failures"];
  ASSERT_EQ(failures.size(), 1u) << json;
  EXPECT_EQ(failures[0]["attempt"], 1);
  // Cancel ends every process of the job.
  const pid_t rank0 = c.RankPid(job, 2, 0);
  const std::string new_key = RendezvousKeyOf(fresh);
  EXPECT_EQ(new_key.size(), 32u);
  EXPECT_NE(new_key, old_key);
  ExpectRendezvousKey(fresh, new_key);
  ExpectRendezvousKey(rank0, new_key);
  EXPECT_EQ(RunCommand(c.Dfc("status --json " + job)).out.find(new_key), std::string::npos)
      << "the job's record shows its rendezvous key to users";
  ASSERT_EQ(RunCommand(c.Dfc("cancel " + job)).exit_code, 0);
  EXPECT_TRUE(WaitGone(fresh, 15));
  EXPECT_TRUE(WaitGone(rank0, 15));
}

// A coordinator that is stopped (SIGSTOP: a frozen VM or container) for
// four worker timeouts hears no heartbeat in that time, through no fault of
// the workers: when it runs again, the job trains on and succeeds without a
// restart, instead of failing for "worker stopped responding".
TEST(ClusterTest, StoppedCoordinatorFailsNoJob) {
  Cluster c(2);
  const std::string job = SubmitAndWaitForSteps(c, 200, "--world-size 2 --epochs 3 --batch-size 16 --max-restarts 0");
  const pid_t coordinator = c.coordinator_pid();
  ASSERT_GT(coordinator, 0);
  ASSERT_EQ(::kill(coordinator, SIGSTOP), 0);
  std::this_thread::sleep_for(std::chrono::seconds(6));  // the cluster's worker timeout is 1.5 s
  ASSERT_EQ(::kill(coordinator, SIGCONT), 0);
  auto watch = RunCommand(c.Dfc("watch --timeout 300 " + job));
  EXPECT_EQ(watch.exit_code, 0) << watch.out << watch.err;
  const std::string json = RunCommand(c.Dfc("status --json " + job)).out;
  EXPECT_EQ(JsonString(json, "state"), "SUCCEEDED") << json;
  EXPECT_EQ(JsonInt(json, "restarts"), 0) << json;
  EXPECT_TRUE(nlohmann::json::parse(json).value("failures", nlohmann::json::array()).empty()) << json;
  EXPECT_EQ(nlohmann::json::parse(json)["epochs"].size(), 3u) << json;
  EXPECT_NE(c.processes().Log("coordinator.log").find("that time is not held against the workers"), std::string::npos)
      << c.processes().Log("coordinator.log");
}

// The coordinator's wall clock steps back an hour (NTP correcting it, a VM
// restored from a snapshot) just after a worker died: the dead worker is
// still given up after the worker timeout, and its job fails saying so.
// Timeouts used to be measured on the wall clock, so the dead worker's last
// heartbeat lay an hour in the future and its job read RUNNING for that
// hour. The coordinator is stopped while its worker is killed and its clock
// stepped, so that no heartbeat comes between them; libfaketime steps its
// CLOCK_REALTIME alone, and the job's finish time (an hour ago) shows that it
// did.
TEST(ClusterTest, AWallClockSteppedBackDoesNotHideADeadWorker) {
  std::string faketime;  // /usr/lib/<multiarch triplet>/faketime/
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/usr/lib", ec)) {
    const std::filesystem::path lib = e.path() / "faketime" / "libfaketimeMT.so.1";
    if (std::filesystem::exists(lib, ec)) faketime = lib.string();
  }
  ASSERT_FALSE(faketime.empty()) << "no /usr/lib/*/faketime/libfaketimeMT.so.1: install libfaketime (scripts/setup.sh "
                                    "does)";
  testing::TempDir clock;
  const std::string offset = clock.Join("offset");
  testing::WriteFileOrDie(offset, "+0\n");
  Cluster::Options o;
  o.workers = 1;
  o.coordinator_env = {"LD_PRELOAD=" + faketime, "FAKETIME_TIMESTAMP_FILE=" + offset, "FAKETIME_NO_CACHE=1",
                       "FAKETIME_DONT_FAKE_MONOTONIC=1"};
  Cluster c(o);
  const std::string job = SubmitAndWaitForSteps(c, 200, "--world-size 1 --epochs 50 --batch-size 16 --max-restarts 0");
  const pid_t worker = c.WorkerOf(job, 0), rank = c.RankPid(job, 1, 0);
  ASSERT_GT(worker, 0);
  ASSERT_GT(rank, 0);
  ASSERT_EQ(::kill(c.coordinator_pid(), SIGSTOP), 0);
  ASSERT_EQ(::kill(worker, SIGKILL), 0);
  ASSERT_EQ(::kill(rank, SIGKILL), 0);
  testing::WriteFileOrDie(offset, "-3600\n");
  ASSERT_EQ(::kill(c.coordinator_pid(), SIGCONT), 0);
  const std::string json = WaitForState(c, job, "FAILED", 30);
  ASSERT_EQ(JsonString(json, "state"), "FAILED") << "the dead worker was not given up within 30 s: " << json;
  EXPECT_NE(JsonString(json, "reason").find("stopped responding"), std::string::npos) << json;
  const int64_t finished = std::stoll(nlohmann::json::parse(json).value("finished_unix_ms", "0"));
  const int64_t real_now = std::chrono::duration_cast<std::chrono::milliseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
  EXPECT_NEAR(static_cast<double>(real_now - finished), 3'600'000.0, 60'000.0)
      << "the coordinator's wall clock did not step back an hour";
}

// A worker that is frozen (SIGSTOP) past the worker timeout is given up; the
// job restarts on the other worker. Its rank, a separate process, still
// trains, and its stop cannot arrive while the worker is frozen: fencing
// makes it stop by itself at its next epoch's end, writing nothing, so the
// run directory holds one attempt's epochs, each once.
TEST(ClusterTest, AFrozenWorkersRankIsFencedOffTheRestartedJobsRunDirectory) {
  Cluster c(2);
  const std::string job = SubmitAndWaitForSteps(c, 200, "--world-size 1 --epochs 5 --batch-size 16 --max-restarts 2");
  const pid_t worker = c.WorkerOf(job, 0), stale = c.RankPid(job, 1, 0);
  ASSERT_GT(worker, 0);
  ASSERT_GT(stale, 0);
  ASSERT_EQ(::kill(worker, SIGSTOP), 0);
  pid_t fresh = -1;
  for (int i = 0; i < 600 && fresh < 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    fresh = c.RankPid(job, 2, 0);
  }
  EXPECT_GT(fresh, 0) << "no second attempt within 60 s";
  // Attempt 1's rank ends on its own although its worker is still frozen.
  const bool fenced = WaitGone(stale, 90);
  ASSERT_EQ(::kill(worker, SIGCONT), 0);
  EXPECT_TRUE(fenced) << "the frozen worker's rank kept training";
  auto watch = RunCommand(c.Dfc("watch --timeout 300 " + job));
  EXPECT_EQ(watch.exit_code, 0) << watch.out << watch.err;
  const nlohmann::json status = nlohmann::json::parse(RunCommand(c.Dfc("status --json " + job)).out);
  EXPECT_EQ(status.value("state", ""), "SUCCEEDED") << status.dump();
  EXPECT_EQ(status.value("restarts", 0), 1) << status.dump();
  const std::string out = status.value("output_dir", "");
  EXPECT_EQ(testing::ReadFileOrDie(out + "/attempt"), "2\n");
  std::vector<int> epochs;
  for (const std::string& line : testing::SplitLines(testing::ReadFileOrDie(out + "/metrics.jsonl"))) {
    epochs.push_back(nlohmann::json::parse(line).value("epoch", 0));
  }
  EXPECT_EQ(epochs, (std::vector<int>{1, 2, 3, 4, 5})) << "two attempts wrote the run directory";
  // The stale rank said why it stopped, in its own log on its worker.
  const std::string stale_log = testing::ReadFileOrDie(c.RankLog(job, 1, 0));
  EXPECT_NE(stale_log.find("attempt 1 no longer owns " + out + ": the job was restarted as attempt 2"),
            std::string::npos)
      << stale_log;
}

// A job's run directory is no place for a local run, nor a local run's for a
// job: `dfc train --out` on a running job's directory is refused naming the
// job's attempt, `dfc delete --outputs` does not remove a cancelled job's
// directory while a `dfc train --resume` goes on with it by hand, and a job
// whose directory a local run holds fails at once
// (a permanent error, not a restart) naming that run, training nothing
// there. The second holder here is this test, through the lock `dfc train`
// takes: a job's directory is known only once it is submitted.
TEST(ClusterTest, ALocalRunAndAJobAreKeptOutOfEachOthersRunDirectory) {
  Cluster c(1);
  const std::string job = SubmitAndWaitForSteps(c, 200, "--world-size 1 --epochs 20 --batch-size 16");
  const std::string shards = c.dir().Join("sh");
  const std::string out = JsonString(RunCommand(c.Dfc("status --json " + job)).out, "output_dir");
  ASSERT_FALSE(out.empty());
  auto local = RunCommand(testing::DfcBinary() + " train --model meso4 --threads 1 --epochs 1 --data " + shards +
                          " --out " + out);
  EXPECT_EQ(local.exit_code, 1) << local.err;
  EXPECT_NE(local.err.find("--out: '" + out + "' is in use by job " + job + " attempt 1 (its rank 0) (pid "),
            std::string::npos)
      << local.err;
  const pid_t rank = c.RankPid(job, 1, 0);
  EXPECT_EQ(RunCommand(c.Dfc("cancel " + job)).exit_code, 0);
  EXPECT_EQ(JsonString(WaitForState(c, job, "CANCELLED", 60), "state"), "CANCELLED");
  // Going on with the cancelled job by hand, once its rank has saved its
  // step and exited (until then a run there is refused naming it, as
  // above): its outputs are not deleted from under that run, and are once it
  // has stopped.
  EXPECT_TRUE(WaitGone(rank, 60));
  testing::CommandResult by_hand;
  std::thread going_on([&] {
    by_hand = RunCommand(testing::DfcBinary() + " train --model mesoinception4 --threads 1 --batch-size 16 --epochs 20 "
                         "--data " + shards + " --resume --out " + out);
  });
  const bool took_over = testing::WaitUntil(
      [&] { return testing::ReadFileOrDie(out + "/run.lock").find("dfc train (pid ") == 0; }, std::chrono::seconds(60));
  auto refused = RunCommand(c.Dfc("delete --outputs " + job));
  const bool stopped = RunCommand("pkill -INT -f -- '--resume --out " + out + "$'").exit_code == 0;
  going_on.join();
  ASSERT_TRUE(took_over) << "exit " << by_hand.exit_code << "\n" << by_hand.out << by_hand.err;
  ASSERT_TRUE(stopped) << by_hand.out << by_hand.err;
  EXPECT_EQ(by_hand.exit_code, 128 + SIGINT) << by_hand.err;
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.err.find("job " + job + "'s outputs at '" + out + "' are in use by dfc train (pid "),
            std::string::npos)
      << refused.err;
  EXPECT_TRUE(std::filesystem::exists(out + "/attempt"));
  auto deleted = RunCommand(c.Dfc("delete --outputs " + job));
  EXPECT_EQ(deleted.exit_code, 0) << deleted.err;
  EXPECT_FALSE(std::filesystem::exists(out));

  auto r = RunCommand(c.Dfc("submit --json --model meso4 --threads 1 --epochs 1 --max-restarts 3 --data " + shards));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string second = JsonString(r.out, "job_id");
  const std::string taken = (std::filesystem::path(out).parent_path() / second).string();
  std::filesystem::create_directories(taken);
  auto held = TryLockFile(taken + "/run.lock", LockMode::kExclusive, "dfc train (this test)");
  ASSERT_TRUE(held.ok()) << held.status();
  const std::string json = WaitForState(c, second, "FAILED", 120);
  ::close(*held);
  EXPECT_EQ(JsonString(json, "state"), "FAILED") << json;
  EXPECT_EQ(JsonString(json, "output_dir"), taken);
  EXPECT_EQ(JsonInt(json, "restarts"), 0) << "another run in the directory is not a transient fault: " << json;
  const std::string reason = JsonString(json, "reason");
  EXPECT_NE(reason.find("the job's run directory '" + taken + "' is in use by dfc train (this test); "),
            std::string::npos)
      << reason;
  EXPECT_FALSE(std::filesystem::exists(taken + "/metrics.jsonl"));
}

// Cancel of a job whose rank is stopped (SIGTERM acts only once it runs):
// the stop sends SIGCONT with SIGTERM, and SIGKILL after the grace period
// ends it if that was not enough.
TEST(ClusterTest, CancelOfAHungJobEndsEveryProcess) {
  Cluster c(1);
  const auto [job, rank] = SubmitAndStopRank(c, 1, "", 0);
  ASSERT_GT(rank, 0);
  auto cancel = RunCommand(c.Dfc("cancel --json " + job));
  EXPECT_EQ(cancel.exit_code, 0) << cancel.err;
  EXPECT_TRUE(WaitGone(rank, 15)) << "a stopped rank survived cancel";
}

// Submits a one-rank MesoInception-4 job on `shards` that is expected to
// fail, and returns its `status --json` once FAILED (or after 120 s).
std::string SubmitUntilFailed(Cluster& c, const std::string& shards, const std::string& flags) {
  auto r = RunCommand(c.Dfc("submit --json --model mesoinception4 --data " + shards +
                            " --world-size 1 --batch-size 8 --threads 1 " + flags));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const std::string json = WaitForState(c, JsonString(r.out, "job_id"), "FAILED", 120);
  EXPECT_EQ(JsonString(json, "state"), "FAILED") << json;
  return json;
}

// A worker that does not see the coordinator's --output-root (a pod without
// the shared volume, a machine without the NFS mount) used to train into a
// directory of its own at that path: the job SUCCEEDED with its checkpoints
// where neither the coordinator, the evaluation servers nor a restarted
// attempt could find them. The rank now finds no claim of the run directory
// there and the job fails at once, not retried, saying why. The worker runs
// in its own mount namespace with an empty tmpfs over the output root.
TEST(ClusterTest, AWorkerThatDoesNotShareTheOutputRootFailsTheJobSayingSo) {
  testing::TempDir outside;
  const std::string root = outside.Join("jobs");
  std::filesystem::create_directories(root);
  Cluster::Options o;
  o.workers = 1;
  o.coordinator_flags = {"--heartbeat-ms", "200", "--worker-timeout-ms", "1500", "--output-root", root};
  o.worker_prefix = {"/usr/bin/unshare", "-rm", "/bin/sh", "-c", "mount -t tmpfs none \"$0\" && exec \"$@\"", root};
  Cluster c(o);
  const std::string shards = testing::SyntheticShards(c.dir(), 64);
  const std::string json = SubmitUntilFailed(c, shards, "--epochs 1 --max-restarts 3");
  EXPECT_EQ(JsonInt(json, "restarts"), 0) << "a worker without the output root is not a transient fault: " << json;
  const std::string reason = JsonString(json, "reason");
  std::printf("reason: %s\n", reason.c_str());
  EXPECT_NE(reason.find("permanent"), std::string::npos) << reason;
  EXPECT_NE(reason.find("this worker does not see the coordinator's --output-root"), std::string::npos) << reason;
  // The coordinator's side of the run directory holds its claim and nothing trained.
  const std::string out = JsonString(json, "output_dir");
  EXPECT_EQ(testing::ReadFileOrDie(out + "/attempt"), "1\n");
  EXPECT_FALSE(std::filesystem::exists(out + "/metrics.jsonl"));
}

// Flips bytes in the middle of a shard file of `shards`; returns its path.
std::string CorruptAShard(const std::string& shards) {
  std::string shard_file;
  for (const auto& e : std::filesystem::directory_iterator(shards)) {
    if (e.path().extension() == ".dfcs" || e.path().filename().string().find("shard") == 0) shard_file = e.path().string();
  }
  EXPECT_FALSE(shard_file.empty()) << shards;
  std::fstream f(shard_file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(std::filesystem::file_size(shard_file) / 2));
  f.write("\xde\xad\xbe\xef\xde\xad\xbe\xef", 8);
  return shard_file;
}

// Fills the file system `dir` lies on, as process `pid` sees it (its own
// mount namespace, through /proc/PID/root), with DIR/filler: up to 16 MiB,
// for the tests' small tmpfs. Returns the filler's path; "" if it could not
// be created.
std::string FillFileSystemOf(pid_t pid, const std::string& dir) {
  const std::string filler = "/proc/" + std::to_string(pid) + "/root" + dir + "/filler";
  std::ofstream f(filler, std::ios::binary);
  EXPECT_TRUE(f.is_open()) << filler;
  if (!f.is_open()) return "";
  const std::string block(4096, '\0');
  for (int i = 0; i < 4096 && f.write(block.data(), block.size()) && f.flush(); ++i) {
  }
  return filler;
}

// A permanent error is not retried: a corrupt shard fails the job at once,
// and the rank's own message (shard and offset) is the job's reason.
TEST(ClusterTest, CorruptShardFailsAtOnceWithTheShardAndOffset) {
  Cluster c(1);
  const std::string shards = testing::SyntheticShards(c.dir(), 64);
  const std::string shard_file = CorruptAShard(shards);
  ASSERT_FALSE(shard_file.empty());
  const std::string json = SubmitUntilFailed(c, shards, "--epochs 2 --max-restarts 3");
  EXPECT_EQ(JsonInt(json, "restarts"), 0) << "a permanent error was retried: " << json;
  const std::string reason = JsonString(json, "reason");
  std::printf("reason: %s\n", reason.c_str());
  EXPECT_NE(reason.find("permanent"), std::string::npos) << reason;
  EXPECT_NE(reason.find("offset"), std::string::npos) << reason;
  EXPECT_NE(reason.find(std::filesystem::path(shard_file).filename().string()), std::string::npos) << reason;
}

// A rank writes its error line in its folder on the worker. When the
// worker's --work-dir is full, that line is lost, and the job's reason used
// to be "rank 0 exited with status 3" alone. It now names the full work
// directory, and the worker's log warns when it starts a rank there. The
// work directory is a 1 MiB tmpfs in the worker's own mount namespace,
// filled through /proc/PID/root.
TEST(ClusterTest, AWorkerWhoseWorkDirIsFullNamesItInTheReasonOfAFailedRank) {
  Cluster::Options o;
  o.workers = 1;
  o.worker_prefix = {"/usr/bin/unshare", "-rm", "/bin/sh", "-c",
                     "mkdir -p \"$4\" && mount -t tmpfs -o size=1m none \"$4\" && exec \"$0\" \"$@\""};
  Cluster c(o);
  const std::string shards = testing::SyntheticShards(c.dir(), 64);
  ASSERT_FALSE(CorruptAShard(shards).empty());
  const std::string filler = FillFileSystemOf(c.worker(0).pid(), c.WorkerDir(0));
  ASSERT_FALSE(filler.empty());
  ASSERT_GT(std::filesystem::file_size(filler), 512u << 10);
  const std::string json = SubmitUntilFailed(c, shards, "--epochs 2 --max-restarts 3");
  const std::string reason = JsonString(json, "reason");
  std::printf("reason: %s\n", reason.c_str());
  EXPECT_NE(reason.find("rank 0: exited with status 3; its error line could not be kept: this worker's --work-dir '" +
                        c.WorkerDir(0) + "' is full"), std::string::npos) << reason;
  EXPECT_NE(c.processes().Log("worker-0.log").find("bytes free: the rank's log, reports and error line may be lost"),
            std::string::npos) << c.processes().Log("worker-0.log");
}

// Appends a record to the first train shard of `shards` (checksums and the
// manifest's counts kept right, so only its content is wrong).
void AppendTrainRecord(const std::string& shards, const Record& record) {
  const std::string manifest_path = shards + "/manifest.json";
  nlohmann::json m = nlohmann::json::parse(testing::ReadFileOrDie(manifest_path));
  for (auto& s : m["shards"]) {
    if (s["split"] != "train") continue;
    const std::string file = shards + "/" + s["file"].get<std::string>();
    const std::string bytes = testing::ReadFileOrDie(file) + EncodeRecord(record);
    testing::WriteFileOrDie(file, bytes);
    s["records"] = s["records"].get<int64_t>() + 1;
    s["bytes"] = bytes.size();
    s["crc32c"] = Crc32c(bytes);
    s["per_class"][record.label] = s["per_class"][record.label].get<int64_t>() + 1;
    m["counts"]["train"][record.label] = m["counts"]["train"][record.label].get<int64_t>() + 1;
    testing::WriteFileOrDie(manifest_path, m.dump(2));
    return;
  }
  FAIL() << "no train shard in " << manifest_path;
}

// A rank's error line need not be UTF-8: here it quotes a record named in
// Latin-1 ("caf\xE9.jpg") that does not decode. It is the job's reason,
// escaped, and the worker stays live. It used to go into the heartbeat as
// it was, the coordinator could not parse any heartbeat of that worker
// again, the job read "worker ... stopped responding" and the worker was
// gone for good. The name also holds an escape sequence that would clear
// the screen of whoever runs `dfc status`: it is printed as text.
TEST(ClusterTest, ANonUtf8ErrorLineIsTheReasonAndTheWorkerStaysLive) {
  Cluster c(1);
  const std::string shards = testing::SyntheticShards(c.dir(), 64);
  Record bad;
  bad.label = 0;
  bad.name = "df/caf\xE9\x1B[2J.jpg";
  bad.payload = "not an image";
  AppendTrainRecord(shards, bad);
  const std::string json = SubmitUntilFailed(c, shards, "--epochs 1");
  const std::string reason = JsonString(json, "reason");
  std::printf("reason: %s\n", reason.c_str());
  EXPECT_NE(reason.find("caf\\\\xE9\\u001b[2J.jpg"), std::string::npos) << reason;  // JSON escapes the backslash and ESC
  EXPECT_EQ(reason.find("stopped responding"), std::string::npos) << reason;
  const std::string text = RunCommand(c.Dfc("status " + JsonString(json, "job_id"))).out;
  EXPECT_EQ(text.find('\x1B'), std::string::npos) << text;
  EXPECT_NE(text.find("reason: "), std::string::npos) << text;
  EXPECT_NE(text.find("caf\\xE9\\x1B[2J.jpg"), std::string::npos) << text;
  EXPECT_TRUE(c.WaitForLiveWorkers(1, 5)) << RunCommand(c.Dfc("workers")).out;
}

TEST(ClusterTest, SecondCoordinatorOnOneStateDirectoryRefusesToStart) {
  Cluster c(0);
  auto second = RunCommand(Bin("dfc-coordinator") + " --listen 127.0.0.1:" + std::to_string(PickFreePort()) +
                           " --state " + c.dir().Join("state"));
  EXPECT_EQ(second.exit_code, 2) << second.err;
  EXPECT_NE(second.err.find("in use by another dfc-coordinator (pid "), std::string::npos) << second.err;
  // The first one still serves.
  EXPECT_EQ(RunCommand(c.Dfc("list")).exit_code, 0);
}

// A second coordinator (another state directory) started on the first's
// port, or on its dashboard's, is refused with the reason. Both used to
// listen (SO_REUSEPORT), and each client's connection went to either: a job
// submitted to one was "no job" to the next `dfc status`.
TEST(ClusterTest, ASecondCoordinatorOnAPortInUseIsRefusedNamingWhy) {
  Cluster::Options o;
  o.operator_endpoints = true;
  Cluster c(o);
  testing::TempDir dir;
  // (Under `timeout`: a second coordinator that did listen would serve on.)
  auto grpc_port =
      RunCommand("timeout 20 " + Bin("dfc-coordinator") + " --listen " + c.address() + " --state " + dir.Join("a"));
  EXPECT_NE(grpc_port.exit_code, 0);
  EXPECT_NE(grpc_port.err.find("dfc-coordinator: cannot listen on " + c.address() + ": Address already in use"),
            std::string::npos)
      << grpc_port.err;
  const std::string dashboard = c.dashboard().substr(std::string("http://").size());
  auto http_port = RunCommand("timeout 20 " + Bin("dfc-coordinator") + " --listen 127.0.0.1:" +
                              std::to_string(PickFreePort()) +
                              " --http-listen " + dashboard + " --state " + dir.Join("b"));
  EXPECT_NE(http_port.exit_code, 0);
  EXPECT_NE(http_port.err.find("cannot listen on " + dashboard + ": Address already in use"), std::string::npos)
      << http_port.err;
  // Every call reaches the first: a job it holds is found every time.
  auto submitted = RunCommand(c.Dfc("submit --json --model meso4 --data " + testing::SyntheticShards(c.dir(), 16) +
                                    " --wait-for-capacity"));
  ASSERT_EQ(submitted.exit_code, 0) << submitted.err;
  const std::string job = JsonString(submitted.out, "job_id");
  for (int i = 0; i < 5; ++i) EXPECT_EQ(RunCommand(c.Dfc("status " + job)).exit_code, 0);
}

// An operator clears what ended: `dfc delete` names a running job (cancel it
// first) and an unknown one and goes on with the rest. A deleted job is gone
// from status, list and logs; with --outputs its run directory is removed;
// its worker removes the job's rank folders. The running job is untouched.
TEST(ClusterTest, DeleteRemovesAnEndedJobItsOutputsAndItsRankFoldersAndSparesARunningOne) {
  Cluster c(1);
  const std::string shards = testing::SyntheticShards(c.dir(), 64);
  std::string status;
  const std::string done = OneEpochThatSucceeded(c, shards, &status);
  ASSERT_FALSE(done.empty()) << status;
  const std::string outputs = JsonString(status, "output_dir");
  ASSERT_TRUE(std::filesystem::exists(outputs + "/latest.ckpt")) << outputs;
  const std::string rank_log = c.RankLog(done, 1, 0);
  ASSERT_FALSE(rank_log.empty());
  const std::filesystem::path rank_folders = std::filesystem::path(rank_log).parent_path().parent_path().parent_path();
  ASSERT_EQ(rank_folders.filename(), done);
  auto r = RunCommand(c.Dfc("submit --json --model meso4 --data " + shards + " --epochs 200 --threads 1"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string running = JsonString(r.out, "job_id");
  const std::string running_status = WaitForState(c, running, "RUNNING", 120);
  ASSERT_EQ(JsonString(running_status, "state"), "RUNNING");
  const std::string running_outputs = JsonString(running_status, "output_dir");

  auto del = RunCommand(c.Dfc("delete --outputs " + running + " job-000000000000 " + done));
  EXPECT_EQ(del.exit_code, 1) << "the first failure's code (FAILED_PRECONDITION): " << del.err;
  EXPECT_NE(del.err.find("dfc: job " + running + " is RUNNING: only a job that ended can be deleted (dfc cancel " +
                         running + " first)"),
            std::string::npos)
      << del.err;
  EXPECT_NE(del.err.find("no job 'job-000000000000'"), std::string::npos) << del.err;
  EXPECT_EQ(del.out, done + " deleted; removed " + outputs + "\n");
  EXPECT_FALSE(std::filesystem::exists(outputs));
  auto gone = RunCommand(c.Dfc("status " + done));
  EXPECT_EQ(gone.exit_code, 2) << gone.out;
  EXPECT_NE(gone.err.find("job '" + done + "' was deleted at "), std::string::npos) << gone.err;
  auto list = RunCommand(c.Dfc("list --json"));
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_EQ(list.out.find(done), std::string::npos) << list.out;
  EXPECT_NE(list.out.find(running), std::string::npos) << list.out;
  EXPECT_NE(RunCommand(c.Dfc("logs " + done)).exit_code, 0);
  for (int i = 0; i < 100 && std::filesystem::exists(rank_folders); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_FALSE(std::filesystem::exists(rank_folders)) << "the worker kept the deleted job's rank folders";
  EXPECT_NE(c.processes().Log("worker-0.log").find("deleted job " + done + ": removed its rank folders"),
            std::string::npos);

  EXPECT_EQ(JsonString(RunCommand(c.Dfc("status --json " + running)).out, "state"), "RUNNING");
  ASSERT_EQ(RunCommand(c.Dfc("cancel " + running)).exit_code, 0);
  del = RunCommand(c.Dfc("delete " + running));
  EXPECT_EQ(del.exit_code, 0) << del.err;
  EXPECT_EQ(del.out, running + " deleted\n");
  EXPECT_TRUE(std::filesystem::exists(running_outputs)) << "without --outputs they stay: " << running_outputs;
}

// `dfc logs` prints a rank's output raw to a pipe, but on a terminal (here
// script(1)'s) with every escape sequence written out: a rank prints what
// its job's data made it print, and the reader is often another user. --tail
// reads the log's end, not all of it, and still gives exactly the last lines.
// Once the rank has exited, its worker keeps its log and drops its reports.
TEST(ClusterTest, LogsEscapeARanksOutputOnATerminalAndTailReadsOnlyTheEnd) {
  Cluster c(1);
  std::string status;
  const std::string job = OneEpochThatSucceeded(c, testing::SyntheticShards(c.dir(), 64), &status);
  ASSERT_FALSE(job.empty()) << status;
  const std::string path = c.RankLog(job, 1, 0);
  ASSERT_FALSE(path.empty());
  // Its reports were forwarded: the worker keeps the rank's log alone.
  const std::string reports = std::filesystem::path(path).parent_path() / "reports";
  for (int i = 0; i < 100 && std::filesystem::exists(reports); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_FALSE(std::filesystem::exists(reports));
  // As if the rank had printed them: 2 MiB of lines, then a line with a
  // terminal title, a screen clear, a bell and a byte that is not UTF-8.
  std::string appended;
  for (int i = 0; appended.size() < (2u << 20); ++i) appended += "filler line " + std::to_string(i) + "\n";
  const std::string hostile = "evil \x1b]0;owned\x07 \x1b[2J\tname\xff";
  appended += hostile + "\nlast line\n";
  {
    std::ofstream f(path, std::ios::app | std::ios::binary);
    f << appended;
  }
  const std::string log = testing::ReadFileOrDie(path);
  auto piped = RunCommand(c.Dfc("logs " + job));
  ASSERT_EQ(piped.exit_code, 0) << piped.err;
  EXPECT_TRUE(piped.out == log) << "a pipe gets the log as it is (" << piped.out.size() << " of " << log.size()
                                << " bytes)";
  auto tail = RunCommand(c.Dfc("logs " + job + " --tail 2"));
  ASSERT_EQ(tail.exit_code, 0) << tail.err;
  EXPECT_EQ(tail.out, hostile + "\nlast line\n");

  for (const std::string& args : {std::string("logs ") + job, std::string("logs --tail 2 ") + job}) {
    auto tty = RunCommand("script -qec '" + c.Dfc(args) + "' /dev/null");
    ASSERT_EQ(tty.exit_code, 0) << tty.out << tty.err;
    EXPECT_EQ(tty.out.find('\x1b'), std::string::npos) << "an escape sequence reached the terminal";
    EXPECT_EQ(tty.out.find('\x07'), std::string::npos) << "a bell reached the terminal";
    EXPECT_NE(tty.out.find("evil \\x1B]0;owned\\x07 \\x1B[2J\tname\\xFF\r\nlast line\r\n"), std::string::npos)
        << tty.out.substr(tty.out.size() > 300 ? tty.out.size() - 300 : 0);
  }
}

// The coordinator's state disk fills up while a job trains. A submission
// is refused naming the database and the full disk, a cancel is refused and
// stops nothing, and the job's end, which cannot be written, waits: once
// space is freed the job is SUCCEEDED with every epoch. (It used to read
// RUNNING for ever, and a refused epoch report was dropped.) The state
// directory is a 4 MiB tmpfs in the coordinator's own mount namespace,
// filled through /proc/PID/root.
TEST(ClusterTest, ACoordinatorWhoseDiskFillsRefusesWritesSayingSoAndCatchesUpWhenSpaceIsFreed) {
  testing::TempDir dir;
  const std::string shards = testing::SyntheticShards(dir, 64);
  const std::string state = dir.Join("state");
  std::filesystem::create_directories(state);
  const std::string addr = "127.0.0.1:" + std::to_string(PickFreePort());
  const std::string metrics = "127.0.0.1:" + std::to_string(PickFreePort());
  testing::Processes procs(&dir);
  Subprocess& coordinator = procs.Start(
      {"/usr/bin/unshare", "-rm", "/bin/sh", "-c", "mount -t tmpfs -o size=4m none \"$0\" && exec \"$@\"", state,
       Bin("dfc-coordinator"), "--listen", addr, "--state", state, "--output-root", dir.Join("jobs"),
       "--heartbeat-ms", "200", "--worker-timeout-ms", "1500", "--metrics-listen", metrics},
      "coordinator.log");
  const std::string failing = "curl -sS -m 20 http://" + metrics + "/metrics | grep '^dfc_state_database_write_failing '";
  procs.Start({Bin("dfc-worker"), "--coordinator", addr, "--work-dir", dir.Join("work"), "--cpu-slots", "1"},
              "worker.log");
  const std::string dfc = testing::DfcBinary() + " --coordinator " + addr;
  testing::CommandResult r;
  for (int i = 0; i < 300; ++i) {
    r = RunCommand(dfc + " submit --json --model meso4 --data " + shards + " --epochs 6 --threads 1");
    if (r.exit_code == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(r.exit_code, 0) << r.err << procs.Log("coordinator.log");
  const std::string job = JsonString(r.out, "job_id");
  std::string json;
  for (int i = 0; i < 1200 && CountEpochs(json) < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    json = RunCommand(dfc + " status --json " + job).out;
  }
  ASSERT_GE(CountEpochs(json), 1) << json;

  // Fill the coordinator's tmpfs (its mount namespace, seen through /proc).
  const std::string filler = FillFileSystemOf(coordinator.pid(), state);
  ASSERT_FALSE(filler.empty());
  ASSERT_GT(std::filesystem::file_size(filler), 2u << 20);
  auto refused = RunCommand(dfc + " submit --model meso4 --data " + shards + " --epochs 1");
  // Not bad input (2): the same submit works once space is freed.
  EXPECT_EQ(refused.exit_code, 6) << refused.err;
  std::printf("refused submit: %s", refused.err.c_str());
  EXPECT_NE(refused.err.find("the job was not submitted: the state database '" + state + "/jobs.db' cannot grow: "
                             "its disk is full"), std::string::npos) << refused.err;
  auto cancel = RunCommand(dfc + " cancel " + job);
  EXPECT_NE(cancel.exit_code, 0) << "a cancel that could not be written: " << cancel.out;
  EXPECT_NE(cancel.err.find("the job was not cancelled: the state database"), std::string::npos) << cancel.err;

  // The rank ends; its exit cannot be written, so the worker's heartbeat is
  // refused (and sent again) and the job still reads RUNNING.
  std::string worker_log;
  for (int i = 0; i < 1200 && worker_log.find("did not take a heartbeat") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    worker_log = procs.Log("worker.log");
  }
  ASSERT_NE(worker_log.find("the coordinator did not take a heartbeat: the state database"), std::string::npos)
      << worker_log;
  std::this_thread::sleep_for(std::chrono::seconds(2));  // heartbeats sent again meanwhile
  EXPECT_EQ(JsonString(RunCommand(dfc + " status --json " + job).out, "state"), "RUNNING");
  EXPECT_EQ(RunCommand(failing).out, "dfc_state_database_write_failing 1\n");

  std::filesystem::remove(filler);
  for (int i = 0; i < 300 && JsonString(json, "state") != "SUCCEEDED"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    json = RunCommand(dfc + " status --json " + job).out;
  }
  EXPECT_EQ(JsonString(json, "state"), "SUCCEEDED") << json << procs.Log("coordinator.log");
  EXPECT_EQ(CountEpochs(json), 6) << json;
  EXPECT_NE(json.find("exited with code 0"), std::string::npos) << "the rank's exit event was lost: " << json;
  EXPECT_EQ(RunCommand(failing).out, "dfc_state_database_write_failing 0\n");
  // Each side said so once when writes failed and once when they worked again.
  const std::string log = procs.Log("coordinator.log");
  const std::string full = "cannot grow: its disk is full";
  EXPECT_EQ(log.find(full), log.rfind(full)) << "logged more than once: " << log;
  EXPECT_NE(log.find("the state database is written again"), std::string::npos) << log;
  worker_log = procs.Log("worker.log");
  EXPECT_EQ(worker_log.find("did not take a heartbeat"), worker_log.rfind("did not take a heartbeat")) << worker_log;
  EXPECT_NE(worker_log.find("the coordinator takes heartbeats again"), std::string::npos) << worker_log;
  EXPECT_EQ(RunCommand(dfc + " submit --model meso4 --data " + shards + " --epochs 1").exit_code, 0);
}

// A jobs.db that is not a database (a bad restore, a disk error) stops the
// coordinator at start, naming the file, and is not overwritten.
TEST(ClusterTest, ADamagedStateDatabaseIsNamedAndLeftAsItIs) {
  testing::TempDir dir;
  std::filesystem::create_directory(dir.Join("state"));
  const std::string garbage(8192, '\x5a');
  testing::WriteFileOrDie(dir.Join("state/jobs.db"), garbage);
  auto r = RunCommand(Bin("dfc-coordinator") + " --listen 127.0.0.1:" + std::to_string(PickFreePort()) +
                      " --state " + dir.Join("state"));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("state database '" + dir.Join("state/jobs.db") + "' cannot be used"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("file is not a database"), std::string::npos) << r.err;
  EXPECT_EQ(testing::ReadFileOrDie(dir.Join("state/jobs.db")), garbage);
}

TEST(ClusterTest, IdempotencyKeyWithAnotherRequestIsRefusedNamingTheDifference) {
  Cluster c(0);
  const std::string shards = testing::SyntheticShards(c.dir(), 8);
  const std::string base = "submit --json --data " + shards + " --idempotency-key same ";
  auto a = RunCommand(c.Dfc(base + "--model mesoinception4 --epochs 2"));
  ASSERT_EQ(a.exit_code, 0) << a.err;
  auto again = RunCommand(c.Dfc(base + "--model mesoinception4 --epochs 2"));
  EXPECT_EQ(JsonString(again.out, "job_id"), JsonString(a.out, "job_id"));
  auto other = RunCommand(c.Dfc(base + "--model resnet50-vggface --epochs 5"));
  EXPECT_NE(other.exit_code, 0);
  EXPECT_NE(other.err.find("idempotency_key"), std::string::npos) << other.err;
  EXPECT_NE(other.err.find("model"), std::string::npos) << other.err;
  EXPECT_NE(other.err.find("epochs"), std::string::npos) << other.err;
}

// `cluster up --listen HOST:0` runs the coordinator on a free port, tells the
// workers and servers that port, and prints it. `cluster down` signals only
// the processes `cluster up` started: a pid in cluster.pids that now belongs
// to another process (pid reuse) is left alone.
TEST(ClusterTest, ClusterUpOnAFreePortAndDownLeavesAReusedPidAlone) {
  testing::TempDir dir;
  const std::string state = dir.Join("state");
  auto up = RunCommand(testing::DfcBinary() + " cluster up --workers 1 --metrics --listen 127.0.0.1:0 --state " + state);
  ASSERT_EQ(up.exit_code, 0) << up.err;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(up.out, m, std::regex("cluster up: coordinator (127\\.0\\.0\\.1:([0-9]+)),"))) << up.out;
  const std::string coordinator_address = m[1].str();
  EXPECT_NE(m[2].str(), "0") << up.out;
  EXPECT_NE(testing::ReadFileOrDie(state + "/logs/coordinator.log").find("listening on " + coordinator_address + " "),
            std::string::npos);
  // Its workers divide this machine's CPUs between them (one worker: all).
  EXPECT_NE(testing::ReadFileOrDie(state + "/logs/worker-0.log").find(absl::StrCat("with 1 slot(s), ", UsableCpus(),
                                                                                   " CPU(s) per rank of --cpus ",
                                                                                   UsableCpus(), " (this process may use ")),
            std::string::npos)
      << testing::ReadFileOrDie(state + "/logs/worker-0.log");
  auto workers = RunCommand(testing::DfcBinary() + " --coordinator " + coordinator_address + " workers");
  EXPECT_EQ(workers.exit_code, 0) << workers.err;
  EXPECT_NE(workers.out.find("live"), std::string::npos) << workers.out;
  // It prints the dashboard's URL and every metrics endpoint, and they answer.
  ASSERT_TRUE(std::regex_search(up.out, m, std::regex("dashboard: (http://127\\.0\\.0\\.1:[0-9]+/)"))) << up.out;
  EXPECT_NE(RunCommand("curl -sS -m 10 " + m[1].str() + "api/workers").out.find("\"live\""), std::string::npos);
  int endpoints = 0;
  for (const std::string& line : testing::SplitLines(up.out)) {
    if (line.rfind("metrics: ", 0) != 0) continue;
    ++endpoints;
    const std::string url = line.substr(line.rfind(' ') + 1);
    EXPECT_NE(RunCommand("curl -sS -m 10 " + url).out.find("# TYPE dfc_"), std::string::npos) << line;
  }
  EXPECT_EQ(endpoints, 3) << up.out;  // coordinator, server, worker
  // A second cluster on its port fails with the coordinator's own reason.
  auto second = RunCommand(testing::DfcBinary() + " cluster up --workers 1 --listen " + coordinator_address +
                           " --state " + dir.Join("second"));
  EXPECT_NE(second.exit_code, 0);
  EXPECT_NE(second.err.find("the coordinator exited: cannot listen on " + coordinator_address +
                            ": Address already in use (its log: "),
            std::string::npos)
      << second.err;
  // What it started for that coordinator is stopped, not left for `cluster down`.
  EXPECT_FALSE(std::filesystem::exists(dir.Join("second/cluster.pids")));
  auto lines = testing::SplitLines(testing::ReadFileOrDie(state + "/cluster.pids"));
  ASSERT_EQ(lines.size(), 3u);  // coordinator, server, worker
  // The worker exits; an unrelated process takes "its" pid (simulated: its
  // line now names the bystander's pid with the worker's start time).
  const pid_t worker = std::stoi(lines[2].substr(0, lines[2].find(' ')));
  const std::string worker_start = lines[2].substr(lines[2].find(' ') + 1);
  ::kill(worker, SIGKILL);
  testing::Processes procs(&dir);
  const pid_t bystander = procs.Start({"/bin/sleep", "60"}, "").pid();
  testing::WriteFileOrDie(state + "/cluster.pids",
                          lines[0] + "\n" + lines[1] + "\n" + std::to_string(bystander) + " " + worker_start + "\n");
  const pid_t coordinator = std::stoi(lines[0].substr(0, lines[0].find(' ')));
  // A stopped coordinator still shuts down cleanly (SIGTERM with SIGCONT), not
  // by the SIGKILL at the end of the grace period.
  ASSERT_EQ(::kill(coordinator, SIGSTOP), 0);
  auto down = RunCommand(testing::DfcBinary() + " cluster down --state " + state);
  EXPECT_EQ(down.exit_code, 0) << down.err;
  EXPECT_NE(down.err.find("pid " + std::to_string(bystander) + " is not the process"), std::string::npos) << down.err;
  EXPECT_EQ(::kill(bystander, 0), 0) << "cluster down killed an unrelated process";
  EXPECT_TRUE(WaitGone(coordinator, 10));
  EXPECT_NE(testing::ReadFileOrDie(state + "/logs/coordinator.log").find("shut down cleanly"), std::string::npos);
}

// `cluster down` stops the workers while the coordinator still answers: a
// job that was running is back in the queue (not failed, not counted as a
// restart), and the next `cluster up` on the state resumes it.
TEST(ClusterTest, ClusterDownPutsRunningJobsBackInTheQueueForTheNextUp) {
  testing::TempDir dir;
  const std::string state = dir.Join("state");
  const std::string shards = testing::SyntheticShards(dir, 64);
  auto up = [&] {
    auto r = RunCommand(testing::DfcBinary() + " cluster up --workers 2 --servers 0 --listen 127.0.0.1:0 --state " + state);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::smatch m;
    EXPECT_TRUE(std::regex_search(r.out, m, std::regex("cluster up: coordinator (127\\.0\\.0\\.1:[0-9]+),"))) << r.out;
    return testing::DfcBinary() + " --coordinator " + m[1].str() + " ";
  };
  std::string dfc = up();
  // Whatever fails below, the processes of the last `cluster up` go.
  absl::Cleanup down_at_end = [&] { RunCommand(testing::DfcBinary() + " cluster down --state " + state); };
  auto worker_ids = [&] {
    std::set<std::string> ids;
    const auto listed = nlohmann::json::parse(RunCommand(dfc + "workers --json").out);
    for (const auto& w : listed["workers"]) {
      if (w["state"] == "live") ids.insert(w["worker_id"].get<std::string>());
    }
    return ids;
  };
  const std::set<std::string> first_ids = worker_ids();
  ASSERT_EQ(first_ids.size(), 2u) << RunCommand(dfc + "workers --json").out;
  auto r = RunCommand(dfc + "submit --json --model mesoinception4 --data " + shards +
                      " --world-size 2 --epochs 50 --batch-size 16 --bn-momentum 0.9 --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string job = JsonString(r.out, "job_id");
  std::string status;
  EXPECT_TRUE(testing::WaitUntil([&] { return CountEpochs(status = RunCommand(dfc + "status --json " + job).out) >= 1; },
                                 std::chrono::seconds(240)))
      << status;
  auto down = RunCommand(testing::DfcBinary() + " cluster down --state " + state);
  EXPECT_EQ(down.exit_code, 0) << down.err;
  EXPECT_NE(testing::ReadFileOrDie(state + "/logs/coordinator.log").find("left (shut down); 1 job(s) back in the queue"),
            std::string::npos)
      << testing::ReadFileOrDie(state + "/logs/coordinator.log");
  dfc = up();
  status = RunCommand(dfc + "status --json " + job).out;
  auto j = nlohmann::json::parse(status);
  ASSERT_NE(j["state"], "FAILED") << status;
  EXPECT_EQ(j.value("restarts", 0), 0) << status;
  ASSERT_GE(j["failures"].size(), 1u) << status;
  EXPECT_NE(j["failures"][0]["reason"].get<std::string>().find("shut down (SIGTERM"), std::string::npos) << status;
  EXPECT_TRUE(testing::WaitUntil(
      [&] {
        status = RunCommand(dfc + "status --json " + job).out;
        return JsonString(status, "state") == "RUNNING" && nlohmann::json::parse(status).value("attempt", 0) == 2;
      },
      std::chrono::seconds(120)))
      << status;
  // The workers came back under their ids (kept in their work directories),
  // so the first attempt's logs are still theirs to send.
  EXPECT_EQ(worker_ids(), first_ids);
  auto logs = RunCommand(dfc + "logs --attempt 1 --rank 0 " + job);
  EXPECT_EQ(logs.exit_code, 0) << logs.err;
  std::string on_disk;
  for (const char* w : {"worker-0", "worker-1"}) {
    const std::string path = state + "/workers/" + w + "/" + job + "/attempt-1/rank-0/log";
    if (std::filesystem::exists(path)) on_disk = testing::ReadFileOrDie(path);
  }
  EXPECT_FALSE(on_disk.empty());
  EXPECT_EQ(logs.out, on_disk);
}

// A second worker started on a work directory that a worker uses (a copied
// command line, a unit started twice) is refused naming the first; it would
// remove that worker's rank folders (jobs it takes for deleted) and take its id.
TEST(ClusterTest, ASecondWorkerOnTheSameWorkDirIsRefusedNamingTheFirst) {
  Cluster c(1);
  // (timeout: a second worker that is not refused runs on)
  auto second = RunCommand("timeout 20 " + Bin("dfc-worker") + " --coordinator " + c.address() +
                           " --cpu-slots 1 --work-dir " + c.WorkerDir(0));
  EXPECT_NE(second.exit_code, 0);
  EXPECT_NE(second.err.find("--work-dir: '" + c.WorkerDir(0) + "' is in use by another dfc-worker (pid " +
                            std::to_string(c.worker(0).pid()) + " on "),
            std::string::npos)
      << second.err;
  const auto listed = nlohmann::json::parse(RunCommand(c.Dfc("workers --json")).out)["workers"];
  ASSERT_EQ(listed.size(), 1u) << listed.dump();
  EXPECT_EQ(listed[0]["state"], "live");
}

// Every field of a submission is checked at submit, by the same validator
// `dfc train` and the ranks use, and the error names the field.
TEST(ClusterTest, EveryInvalidFieldIsRefusedAtSubmitNamingIt) {
  Cluster c(0);
  const std::string shards = testing::SyntheticShards(c.dir(), 8);
  const std::string base = "submit --model mesoinception4 --data " + shards + " ";
  struct Case {
    std::string args, field;
  };
  for (const Case& bad : std::vector<Case>{{"--lr nan", "config.lr"},
                                           {"--lr -1", "config.lr"},
                                           {"--adam-eps inf", "config.adam_eps"},
                                           {"--bn-momentum 5", "config.bn_momentum"},
                                           {"--threads -5", "config.threads_per_rank"},
                                           {"--threads 100000", "config.threads_per_rank"},
                                           {"--max-train-images -3", "config.max_train_images"},
                                           {"--max-val-images -1", "config.max_val_images"},
                                           {"--early-stopping-patience -2", "config.early_stopping_patience"},
                                           {"--hang-timeout -1", "config.hang_timeout_s"},
                                           {"--priority 2147483647", "priority"},
                                           {"--max-restarts 1000", "max_restarts"},
                                           {"--loss hinge", "config.loss"},
                                           {"--lr-schedule cosine", "config.lr_schedule"},
                                           {"--init " + std::string(100000, 'x'), "config.init"},
                                           {"--idempotency-key " + std::string(300, 'k'), "idempotency_key"}}) {
    auto r = RunCommand(c.Dfc(base + bad.args));
    EXPECT_EQ(r.exit_code, 2) << bad.args.substr(0, 60) << ": " << r.err;
    EXPECT_NE(r.err.find(bad.field), std::string::npos) << bad.args.substr(0, 60) << ": " << r.err.substr(0, 300);
  }
  EXPECT_EQ(RunCommand(c.Dfc("list --json")).out.find("job_id"), std::string::npos) << "a refused submission left a job";
}

// ListJobs pages and returns summaries; `dfc list` follows the pages.
TEST(ClusterTest, ListPagesFiltersAndReturnsSummaries) {
  Cluster c(0);  // no workers: every job stays QUEUED
  const std::string shards = testing::SyntheticShards(c.dir(), 8);
  std::vector<std::string> ids;
  for (int i = 0; i < 7; ++i) {
    auto r = RunCommand(c.Dfc("submit --json --model mesoinception4 --data " + shards));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    ids.push_back(JsonString(r.out, "job_id"));
  }
  ASSERT_EQ(RunCommand(c.Dfc("cancel " + ids[2])).exit_code, 0);
  auto count = [](const std::string& json) { return static_cast<int>(nlohmann::json::parse(json)["jobs"].size()); };
  auto all = RunCommand(c.Dfc("list --json --page-size 3"));
  ASSERT_EQ(all.exit_code, 0) << all.err;
  EXPECT_EQ(count(all.out), 7) << all.out;
  const auto jobs = nlohmann::json::parse(all.out)["jobs"];
  for (int i = 0; i < 7; ++i) EXPECT_EQ(jobs[i]["job_id"], ids[i]) << "pages lost or reordered a job";
  auto queued = RunCommand(c.Dfc("list --json --state queued --page-size 2"));
  ASSERT_EQ(queued.exit_code, 0) << queued.err;
  EXPECT_EQ(count(queued.out), 6) << queued.out;
  auto cancelled = RunCommand(c.Dfc("list --json --state CANCELLED"));
  EXPECT_EQ(count(cancelled.out), 1) << cancelled.out;
  auto bad_state = RunCommand(c.Dfc("list --state sleeping"));
  EXPECT_EQ(bad_state.exit_code, 2);
  EXPECT_NE(bad_state.err.find("--state"), std::string::npos) << bad_state.err;
  // A queued job says where it stands and why, in JSON and in words, and
  // `status` shows its timeline.
  auto status = RunCommand(c.Dfc("status --json " + ids[4]));
  ASSERT_EQ(status.exit_code, 0) << status.err;
  const auto waiting = nlohmann::json::parse(status.out)["waiting"];
  EXPECT_EQ(waiting["position"], 4) << status.out;  // ids[2] was cancelled
  EXPECT_EQ(waiting["reason"], "needs 1 slot(s); no live workers") << status.out;
  auto words = RunCommand(c.Dfc("status " + ids[4]));
  EXPECT_NE(words.out.find("waiting: position 4 in the queue: needs 1 slot(s); no live workers"), std::string::npos)
      << words.out;
  EXPECT_NE(words.out.find("submitted"), std::string::npos) << words.out;
  auto cancelled_status = RunCommand(c.Dfc("status " + ids[2]));
  EXPECT_NE(cancelled_status.out.find("cancelled    cancelled by request"), std::string::npos) << cancelled_status.out;
}

// Data and init weights must resolve inside the coordinator's data roots
// (here the default: the state directory's parent, the test's temp dir).
// Outside, the answer is the same whether or not the path exists.
TEST(ClusterTest, PathsOutsideTheDataRootsAreRefusedAlike) {
  Cluster c(0);
  const std::string shards = testing::SyntheticShards(c.dir(), 8);
  std::filesystem::create_directory_symlink("/etc", c.dir().Join("etc-link"));
  struct Case {
    std::string args, field, path;
  };
  for (const Case& bad : std::vector<Case>{{"--data /etc/passwd", "config.data", "/etc/passwd"},
                                           {"--data /etc/no-such-file", "config.data", "/etc/no-such-file"},
                                           {"--data " + c.dir().Join("etc-link"), "config.data", c.dir().Join("etc-link")},
                                           {"--data " + c.dir().Join("sh/../../.."), "config.data",  // dfc submit sends it normalised
                                            std::filesystem::path(c.dir().Join("sh/../../..")).lexically_normal().string()},
                                           {"--data " + shards + " --init /etc/shadow", "config.init", "/etc/shadow"},
                                           {"--data " + shards + " --init /etc/none.h5", "config.init", "/etc/none.h5"},
                                           {"--data " + shards + " --init " + c.dir().Join("etc-link/shadow"), "config.init",
                                            c.dir().Join("etc-link/shadow")}}) {
    auto r = RunCommand(c.Dfc("submit --model mesoinception4 " + bad.args));
    EXPECT_EQ(r.exit_code, 2) << bad.args << ": " << r.err;
    EXPECT_NE(r.err.find(bad.field + " (--" + bad.field.substr(7) + "): '" + bad.path +
                         "' is outside the coordinator's data roots"),
              std::string::npos)
        << bad.args << ": " << r.err;
  }
  // Inside the roots a missing path says so.
  auto missing = RunCommand(c.Dfc("submit --model mesoinception4 --data " + c.dir().Join("nothing")));
  EXPECT_EQ(missing.exit_code, 2);
  EXPECT_NE(missing.err.find("not a shard directory"), std::string::npos) << missing.err;
}

// Ranks train on while the coordinator is down; the restarted coordinator's
// record holds every epoch the run directory holds.
TEST(ClusterTest, EpochsTrainedWhileTheCoordinatorWasDownAreInTheRecord) {
  Cluster c(1);
  const std::string shards = testing::SyntheticShards(c.dir(), 64);
  auto r = RunCommand(c.Dfc("submit --json --model mesoinception4 --data " + shards +
                            " --world-size 1 --epochs 6 --batch-size 16 --bn-momentum 0.9 --threads 1"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string job = JsonString(r.out, "job_id");
  std::string status;
  for (int i = 0; i < 1200 && CountEpochs(status) < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    status = RunCommand(c.Dfc("status --json " + job)).out;
  }
  ASSERT_GE(CountEpochs(status), 1) << status;
  const std::string metrics = JsonString(status, "output_dir") + "/metrics.jsonl";
  c.KillCoordinator();
  // Wait until the ranks have finished at least two more epochs unseen.
  for (int i = 0; i < 600 && testing::SplitLines(testing::ReadFileOrDie(metrics)).size() < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  c.StartCoordinator();
  auto watch = RunCommand(c.Dfc("watch --timeout 400 " + job));
  EXPECT_EQ(watch.exit_code, 0) << watch.out << watch.err;
  const auto record = nlohmann::json::parse(RunCommand(c.Dfc("status --json " + job)).out);
  std::set<int> in_file;
  for (const std::string& line : testing::SplitLines(testing::ReadFileOrDie(metrics))) {
    in_file.insert(nlohmann::json::parse(line)["epoch"].get<int>());
  }
  std::vector<int> in_record;
  for (const auto& e : record["epochs"]) in_record.push_back(e["epoch"].get<int>());
  EXPECT_EQ(in_record, std::vector<int>(in_file.begin(), in_file.end())) << record.dump();
  EXPECT_EQ(in_record, (std::vector<int>{1, 2, 3, 4, 5, 6})) << record.dump();
}

// Users and workers hold different secrets: a user's token cannot register a
// worker, a worker's token cannot list jobs; a coordinator reachable from the
// network without a token refuses to start unless told --insecure.
TEST(ClusterTest, UsersAndWorkersHoldDifferentTokensAndOpenEndpointsNeedInsecure) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("user-token"), "user-secret\n");
  testing::WriteFileOrDie(dir.Join("worker-token"), "worker-secret\n");
  const std::string addr = "127.0.0.1:" + std::to_string(PickFreePort());
  testing::Processes procs(&dir);
  procs.Start({Bin("dfc-coordinator"), "--listen", addr, "--state", dir.Join("state"), "--heartbeat-ms", "200",
               "--token-file", dir.Join("user-token"), "--worker-token-file", dir.Join("worker-token")},
              "coordinator.log");
  const std::string dfc = testing::DfcBinary() + " --coordinator " + addr;
  testing::CommandResult ok;
  for (int i = 0; i < 100 && (ok = RunCommand(dfc + " --token-file " + dir.Join("user-token") + " list")).exit_code != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  auto worker_lists = RunCommand(dfc + " --token-file " + dir.Join("worker-token") + " list");
  EXPECT_NE(worker_lists.exit_code, 0) << "the workers' token listed jobs";
  procs.Start({Bin("dfc-worker"), "--coordinator", addr, "--token-file", dir.Join("user-token"), "--work-dir",
               dir.Join("worker-user")},
              "worker-user.log");
  procs.Start({Bin("dfc-worker"), "--coordinator", addr, "--token-file", dir.Join("worker-token"), "--work-dir",
               dir.Join("worker-worker")},
              "worker-worker.log");
  std::string good, bad;
  for (int i = 0; i < 100 && good.find("registered as") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    good = testing::ReadFileOrDie(dir.Join("worker-worker.log"));
  }
  for (int i = 0; i < 100 && bad.find("cannot register") == std::string::npos; ++i) {
    bad = testing::ReadFileOrDie(dir.Join("worker-user.log"));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_NE(good.find("registered as"), std::string::npos) << good;
  EXPECT_EQ(bad.find("registered as"), std::string::npos) << "a user's token registered a worker: " << bad;
  EXPECT_NE(bad.find("token"), std::string::npos) << bad;

  const std::string open = "0.0.0.0:" + std::to_string(PickFreePort());
  auto refused = RunCommand(Bin("dfc-coordinator") + " --listen " + open + " --state " + dir.Join("open-state"));
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_NE(refused.err.find("refusing to listen on " + open + " without a token"), std::string::npos) << refused.err;
  procs.Start({Bin("dfc-coordinator"), "--listen", open, "--state", dir.Join("open-state"), "--insecure"},
              "insecure.log");
  std::string log;
  for (int i = 0; i < 100 && log.find("listening on") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    log = testing::ReadFileOrDie(dir.Join("insecure.log"));
  }
  EXPECT_NE(log.find("WARNING: listening on " + open + " with no token"), std::string::npos) << log;
}

// A rank reads users' files with libjpeg, libpng and libhdf5, so it holds
// no credential of the coordinator's: the worker's token (given here in its
// environment) is neither in the rank's environment nor on its command line,
// and neither is the coordinator's address; the worker forwards the rank's
// reports, so the job's epochs and step progress still reach the record.
TEST(ClusterTest, ARankHoldsNoCredentialAndItsWorkerForwardsItsReports) {
  testing::TempDir dir;
  testing::WriteFileOrDie(dir.Join("user-token"), "user-secret\n");
  testing::WriteFileOrDie(dir.Join("worker-token"), "worker-secret\n");
  const std::string shards = testing::SyntheticShards(dir, 96);
  const std::string addr = "127.0.0.1:" + std::to_string(PickFreePort());
  testing::Processes procs(&dir);
  procs.Start({Bin("dfc-coordinator"), "--listen", addr, "--state", dir.Join("state"), "--heartbeat-ms", "200",
               "--token-file", dir.Join("user-token"), "--worker-token-file", dir.Join("worker-token")},
              "coordinator.log");
  procs.Start({"/usr/bin/env", "DFC_TOKEN=worker-secret", Bin("dfc-worker"), "--coordinator", addr, "--work-dir",
               dir.Join("work")},
              "worker.log");
  const std::string dfc = testing::DfcBinary() + " --coordinator " + addr + " --token-file " + dir.Join("user-token");
  testing::CommandResult r;
  for (int i = 0; i < 100; ++i) {
    r = RunCommand(dfc + " submit --json --model mesoinception4 --data " + shards +
                   " --world-size 1 --epochs 4 --batch-size 16 --threads 1");
    if (r.exit_code == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string job = JsonString(r.out, "job_id");
  const std::regex started("started " + job + " attempt 1 rank 0/1 \\(pid ([0-9]+)\\)");
  pid_t rank = -1;
  for (int i = 0; i < 600 && rank < 0; ++i) {
    std::smatch m;
    const std::string log = procs.Log("worker.log");
    if (std::regex_search(log, m, started)) rank = std::stoi(m[1]);
    else std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_GT(rank, 0) << procs.Log("worker.log");
  // The worker logs the start right after its fork: until the rank has
  // exec'd, /proc shows the worker's copy of its command line and
  // environment, and inside execve nothing. Wait for the rank's own.
  std::vector<std::string> env, argv;
  for (int i = 0; i < 500; ++i) {
    argv = ProcStrings(rank, "cmdline");
    env = ProcStrings(rank, "environ");
    if ((argv.size() > 1 && argv[1] == "rank" && !env.empty()) || ::kill(rank, 0) != 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_FALSE(env.empty()) << "the rank ended before it was looked at";
  ASSERT_FALSE(argv.empty());
  for (const std::string& e : env) {
    EXPECT_EQ(e.find("worker-secret"), std::string::npos) << e;
    EXPECT_NE(e.rfind("DFC_TOKEN=", 0), 0u) << e;
  }
  // A CPU slot's rank sees no GPU, whatever the machine has.
  EXPECT_NE(std::find(env.begin(), env.end(), "CUDA_VISIBLE_DEVICES="), env.end());
  for (const std::string& a : argv) {
    EXPECT_EQ(a.find("worker-secret"), std::string::npos) << a;
    EXPECT_EQ(a.find(addr), std::string::npos) << "the rank was given the coordinator's address";
    EXPECT_NE(a, "--tls-key");
  }
  // Step progress arrives while it trains; every epoch is in the record.
  bool progress_seen = false;
  std::string status;
  for (int i = 0; i < 3000; ++i) {
    status = RunCommand(dfc + " status --json " + job).out;
    const auto j = nlohmann::json::parse(status, nullptr, false);
    if (!j.is_discarded() && j.contains("progress") && j["progress"].contains("steps")) {
      const auto& steps = j["progress"]["steps"];  // int64: a string in proto JSON
      progress_seen = progress_seen || (steps.is_string() ? steps.get<std::string>() != "0" : steps.get<int64_t>() > 0);
    }
    if (JsonString(status, "state") == "SUCCEEDED" || JsonString(status, "state") == "FAILED") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(JsonString(status, "state"), "SUCCEEDED") << status << procs.Log("worker.log");
  EXPECT_TRUE(progress_seen) << "no step progress was forwarded";
  const auto record = nlohmann::json::parse(status);
  std::vector<int> epochs;
  for (const auto& e : record["epochs"]) epochs.push_back(e["epoch"].get<int>());
  EXPECT_EQ(epochs, (std::vector<int>{1, 2, 3, 4})) << status;
  EXPECT_FALSE(record.value("resolved_config", "").empty()) << "the resolved hyper-parameters were not forwarded";
}

// A CPU rank opens nothing of its user's outside its job's files: a train
// shard that is a symlink out of the job's data directory (to a valid copy
// of itself, still inside the coordinator's data roots) is refused by the
// kernel, and the job fails at once naming it. With --rank-sandbox-off the
// same job on the same files trains: what the confinement stops.
TEST(ClusterTest, ACpuRankOpensNothingOutsideItsJobsFiles) {
  for (const bool confined : {true, false}) {
    SCOPED_TRACE(confined ? "confined" : "--rank-sandbox-off");
    Cluster::Options o;
    o.workers = 1;
    if (!confined) o.worker_flags.push_back("--rank-sandbox-off");
    Cluster c(o);
    const std::string shards = testing::SyntheticShards(c.dir(), 48);
    const std::string shard = shards + "/train-00000.dfcs";
    const std::string elsewhere = c.dir().Join("elsewhere");
    std::filesystem::create_directories(elsewhere);
    std::filesystem::rename(shard, elsewhere + "/train-00000.dfcs");
    std::filesystem::create_symlink(elsewhere + "/train-00000.dfcs", shard);
    auto r = RunCommand(c.Dfc("submit --json --model mesoinception4 --data " + shards +
                              " --world-size 1 --epochs 1 --batch-size 8 --threads 1 --max-restarts 3"));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const std::string job = JsonString(r.out, "job_id");
    std::string json;
    for (int i = 0; i < 1200; ++i) {
      json = RunCommand(c.Dfc("status --json " + job)).out;
      if (JsonString(json, "state") == "SUCCEEDED" || JsonString(json, "state") == "FAILED") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    const std::string log = testing::ReadFileOrDie(c.RankLog(job, 1, 0));
    if (!confined) {
      EXPECT_NE(log.find("rank 0: not confined"), std::string::npos) << log;
      EXPECT_EQ(JsonString(json, "state"), "SUCCEEDED") << json << log;
      continue;
    }
    EXPECT_NE(log.find("rank 0: confined to its job's files (seccomp, "), std::string::npos) << log;
    if (log.find("no Landlock") != std::string::npos) GTEST_SKIP() << "this kernel has no Landlock: " << log;
    EXPECT_EQ(JsonString(json, "state"), "FAILED") << json << log;
    EXPECT_EQ(JsonInt(json, "restarts"), 0) << "a refused file was retried: " << json;
    const std::string reason = JsonString(json, "reason");
    std::printf("reason: %s\n", reason.c_str());
    EXPECT_NE(reason.find("train-00000.dfcs"), std::string::npos) << reason;
    EXPECT_NE(reason.find("Permission denied (a confined rank opens only files beneath its job's data"),
              std::string::npos) << reason;
  }
}

// A job without --threads: each rank gets its worker's share of the CPUs
// the worker may use (here two slots: half), not the machine's cores, and
// both the worker and the rank say so.
TEST(ClusterTest, ARankGetsItsWorkersShareOfTheCpus) {
  Cluster::Options o;
  o.workers = 1;
  o.worker_flags = {"--cpu-slots", "2"};
  Cluster c(o);
  const CpuBudget cpus = UsableCpuBudget();
  const int share = std::max(1, cpus.usable / 2);
  EXPECT_NE(c.processes().Log("worker-0.log").find(absl::StrCat("with 2 slot(s), ", share, " CPU(s) per rank of ",
                                                                cpus.Describe())),
            std::string::npos)
      << c.processes().Log("worker-0.log");
  const std::string shards = testing::SyntheticShards(c.dir(), 24);
  auto r = RunCommand(c.Dfc("submit --json --model meso4 --data " + shards + " --world-size 1 --epochs 1 --batch-size 6"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string job = JsonString(r.out, "job_id");
  auto watch = RunCommand(c.Dfc("watch --timeout 300 " + job));
  EXPECT_EQ(watch.exit_code, 0) << watch.out << watch.err;
  const std::string log = testing::ReadFileOrDie(c.RankLog(job, 1, 0));
  EXPECT_NE(log.find(absl::StrCat("threads: ", share, " intra-op, ", std::max(1, share / 2), " decoding, for ", share,
                                  share == 1 ? " CPU;" : " CPUs;")),
            std::string::npos)
      << log;
}

// The real MesoNet training folder as users have it (`train:test/`), a subset
// whose size leaves a ragged last global batch (97 = 3 x 32 + 1: rank 1's
// share of the last batch is empty), two ranks on two workers, then the best
// checkpoint evaluated through `dfc evaluate`.
TEST(ClusterTest, RealMesoNetSubsetWithARaggedLastBatchTrainsAndEvaluates) {
  const std::string real = testing::SharedDir() + "/data/mesonet-deepfake";
  if (!std::filesystem::exists(real + "/train:test")) GTEST_SKIP() << "../shared not present";
  Cluster c(WithServer(2));
  auto shard = RunCommand(testing::DfcBinary() + " shard --src " + real + " --out " + c.dir().Join("real-shards"));
  ASSERT_EQ(shard.exit_code, 0) << shard.err;
  auto r = RunCommand(c.Dfc("submit --json --model mesoinception4 --data " + c.dir().Join("real-shards") +
                            " --world-size 2 --epochs 2 --batch-size 32 --max-train-images 97 --max-val-images 64"
                            " --threads 1"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string job = JsonString(r.out, "job_id");
  auto watch = RunCommand(c.Dfc("watch --timeout 400 " + job));
  EXPECT_EQ(watch.exit_code, 0) << watch.out << watch.err;
  const std::string status = RunCommand(c.Dfc("status --json " + job)).out;
  ASSERT_EQ(JsonString(status, "state"), "SUCCEEDED") << status;
  EXPECT_EQ(JsonInt(status, "restarts"), 0) << status;
  EXPECT_EQ(CountEpochs(status), 2) << status;
  const std::string samples = testing::SharedDir() + "/data/mesonet-samples";
  auto eval = RunCommand(c.Dfc("evaluate --json --job " + job + " --checkpoint best " + samples));
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  const auto summary = nlohmann::json::parse(eval.out);
  EXPECT_EQ(summary["count"], 4) << eval.out;
  EXPECT_EQ(summary["errors"], 0) << eval.out;
}

// TLS with client certificates and a bearer token, on every endpoint.
TEST(ClusterTest, TlsAndTokenAreEnforced) {
  testing::TempDir dir;
  const std::string d = dir.path();
  // A CA, a server certificate for 127.0.0.1 and a client certificate.
  const std::string gen =
      "cd " + d + " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=dfc-ca" +
      " && openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=localhost" +
      " && printf 'subjectAltName=IP:127.0.0.1,DNS:localhost' > san.ext" +
      " && openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext" +
      " && openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=dfc-client" +
      " && openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2" +
      " && printf 's3cret\\n' > token";
  auto g = RunCommand(gen);
  ASSERT_EQ(g.exit_code, 0) << g.err;
  const int port = PickFreePort();
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  testing::Processes procs(&dir);
  const std::string http = "127.0.0.1:" + std::to_string(PickFreePort());
  const std::string metrics = "127.0.0.1:" + std::to_string(PickFreePort());
  procs.Start({Bin("dfc-coordinator"), "--listen", addr, "--state", d + "/state", "--tls-cert", d + "/server.pem",
               "--tls-key", d + "/server.key", "--tls-ca", d + "/ca.pem", "--token-file", d + "/token",
               "--http-listen", http, "--metrics-listen", metrics},
              "coordinator.log");
  const std::string dfc = testing::DfcBinary() + " --coordinator " + addr;
  const std::string tls = " --tls-ca " + d + "/ca.pem --tls-cert " + d + "/client.pem --tls-key " + d + "/client.key";
  testing::CommandResult ok;
  for (int i = 0; i < 50; ++i) {  // until the server is up
    ok = RunCommand(dfc + tls + " --token-file " + d + "/token list");
    if (ok.exit_code == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  auto no_token = RunCommand(dfc + tls + " list");
  EXPECT_NE(no_token.exit_code, 0);
  EXPECT_NE(no_token.err.find("token"), std::string::npos) << no_token.err;
  auto plaintext = RunCommand(dfc + " --token-file " + d + "/token list");
  EXPECT_NE(plaintext.exit_code, 0) << "a plaintext client got through";
  auto no_client_cert = RunCommand(dfc + " --tls-ca " + d + "/ca.pem --token-file " + d + "/token list");
  EXPECT_NE(no_client_cert.exit_code, 0) << "a client without a certificate got through";
  // The evaluation tier sits behind the same TLS and token, and reaches the
  // coordinator's catalogue over TLS with the workers' token (one token here).
  procs.Start({Bin("dfc-server"), "--listen", "127.0.0.1:" + std::to_string(PickFreePort()), "--coordinator", addr,
               "--models-dir", d + "/state/models", "--device", "cpu", "--tls-cert", d + "/server.pem", "--tls-key",
               d + "/server.key", "--tls-ca", d + "/ca.pem", "--token-file", d + "/token", "--coordinator-tls-ca",
               d + "/ca.pem", "--coordinator-tls-cert", d + "/client.pem", "--coordinator-tls-key", d + "/client.key",
               "--worker-token-file", d + "/token"},
              "server.log");
  testing::CommandResult models;
  for (int i = 0; i < 100; ++i) {  // until the server has announced itself
    models = RunCommand(dfc + tls + " --token-file " + d + "/token models --json");
    if (models.exit_code == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_EQ(models.exit_code, 0) << models.err << procs.Log("server.log");
  // The dashboard and the metrics are HTTPS with the coordinator's certificate;
  // the dashboard wants the users' token (header, or the cookie a ?token= link sets).
  auto curl = [&](const std::string& args) {
    return RunCommand("curl -sS -m 10 --cacert " + d + "/ca.pem -o /dev/null -D - -w '%{http_code}' " + args);
  };
  auto code = [](const testing::CommandResult& r) { return r.out.size() >= 3 ? r.out.substr(r.out.size() - 3) : r.out; };
  EXPECT_EQ(code(curl("https://" + http + "/api/jobs")), "401");
  EXPECT_EQ(code(curl("-H 'Authorization: Bearer wrong' https://" + http + "/api/jobs")), "401");
  EXPECT_EQ(code(curl("-H 'Authorization: Bearer s3cret' https://" + http + "/api/jobs")), "200");
  EXPECT_EQ(code(curl("-b dfc_token=s3cret https://" + http + "/api/workers")), "200");
  auto link = curl("'https://" + http + "/jobs/x?token=s3cret'");
  EXPECT_EQ(code(link), "303") << link.out;
  EXPECT_NE(link.out.find("dfc_token=s3cret; Path=/; HttpOnly; SameSite=Strict; Secure"), std::string::npos)
      << link.out;
  EXPECT_NE(link.out.find("Location: /jobs/x"), std::string::npos) << link.out;
  EXPECT_EQ(code(curl("'https://" + http + "/?token=wrong'")), "401");
  auto plain = RunCommand("curl -sS -m 10 http://" + http + "/api/jobs -H 'Authorization: Bearer s3cret'");
  EXPECT_EQ(plain.out.find("\"jobs\""), std::string::npos) << "plaintext HTTP answered: " << plain.out;
  EXPECT_EQ(code(curl("https://" + metrics + "/metrics")), "200");
  // With the expiry of the certificates it uses, for an alert before one lapses.
  auto scrape = RunCommand("curl -sS -m 10 --cacert " + d + "/ca.pem https://" + metrics + "/metrics");
  EXPECT_NE(scrape.out.find("dfc_tls_certificate_expiry_timestamp_seconds{flag=\"--tls-cert\",file=\"" + d +
                            "/server.pem\"}"),
            std::string::npos)
      << scrape.out;
  EXPECT_NE(scrape.out.find("dfc_tls_certificate_expiry_timestamp_seconds{flag=\"--tls-ca\""), std::string::npos);
  auto metrics_plain = RunCommand("curl -sS -m 10 http://" + metrics + "/metrics");
  EXPECT_EQ(metrics_plain.out.find("dfc_jobs"), std::string::npos) << "plaintext metrics answered";
  auto models_no_token = RunCommand(dfc + tls + " models");
  EXPECT_NE(models_no_token.exit_code, 0);
  EXPECT_NE(models_no_token.err.find("token"), std::string::npos) << models_no_token.err;
  testing::WriteFileOrDie(d + "/img/a.png", "x");
  auto eval_no_token = RunCommand(dfc + tls + " evaluate --model m " + d + "/img");
  EXPECT_NE(eval_no_token.err.find("token"), std::string::npos) << eval_no_token.err;
}

// A worker down when its job is deleted: when it comes back on the same
// --work-dir (a restarted container, a rebooted machine), the job's rank
// folders go, because the coordinator recorded the deletion.
TEST(ClusterTest, AWorkerDownWhenItsJobIsDeletedRemovesTheJobsFoldersWhenItComesBack) {
  Cluster c(1);
  std::string status;
  const std::string job = OneEpochThatSucceeded(c, testing::SyntheticShards(c.dir(), 16), &status);
  ASSERT_FALSE(job.empty()) << status;
  const std::string folder = c.WorkerDir(0) + "/" + job;
  ASSERT_TRUE(std::filesystem::is_directory(folder)) << folder;
  c.worker(0).Stop(std::chrono::milliseconds(0));
  auto deleted = RunCommand(c.Dfc("delete " + job));
  ASSERT_EQ(deleted.exit_code, 0) << deleted.err;
  ASSERT_TRUE(std::filesystem::is_directory(folder)) << "removed by a worker that was down";
  c.processes().Start({Bin("dfc-worker"), "--coordinator", c.address(), "--work-dir", c.WorkerDir(0),
                       "--cpu-slots", "1"},
                      "worker-0-again.log");
  EXPECT_TRUE(testing::WaitUntil([&] { return !std::filesystem::exists(folder); }, std::chrono::seconds(20)))
      << c.processes().Log("worker-0-again.log");
  auto gone = RunCommand(c.Dfc("status " + job));
  EXPECT_NE(gone.exit_code, 0);
  EXPECT_NE(gone.err.find("job '" + job + "' was deleted at "), std::string::npos) << gone.err;
  auto logs = RunCommand(c.Dfc("logs " + job));
  EXPECT_NE(logs.exit_code, 0);
  EXPECT_NE(logs.err.find("job '" + job + "' was deleted at "), std::string::npos) << logs.err;
}

// The state database backed up while its coordinator runs, as an operator
// does from cron, then restored: a coordinator started on the copy knows
// the job and its epochs, and takes its own copies into --backup-dir.
TEST(ClusterTest, AStateBackupTakenWhileTheCoordinatorRunsRestoresItsJobs) {
  Cluster c(1);
  std::string status;
  const std::string job = OneEpochThatSucceeded(c, testing::SyntheticShards(c.dir(), 16), &status);
  ASSERT_FALSE(job.empty()) << status;
  const std::string restored = c.dir().Join("restored");
  std::filesystem::create_directories(restored);
  auto backup = RunCommand(Bin("dfc-coordinator") + " --state " + c.dir().Join("state") + " --backup-to " + restored +
                           "/jobs.db");
  ASSERT_EQ(backup.exit_code, 0) << backup.err;
  EXPECT_NE(backup.out.find("backed up 1 job(s)"), std::string::npos) << backup.out;
  EXPECT_FALSE(std::filesystem::exists(restored + "/jobs.db.partial"));
  EXPECT_TRUE(c.WaitForLiveWorkers(1, 1)) << "the running coordinator was disturbed";
  // A wrong --state is named, not backed up empty.
  auto wrong = RunCommand(Bin("dfc-coordinator") + " --state " + c.dir().Join("nowhere") + " --backup-to " +
                          c.dir().Join("empty.db"));
  EXPECT_EQ(wrong.exit_code, 2);
  EXPECT_NE(wrong.err.find("cannot open the state database '" + c.dir().Join("nowhere") + "/jobs.db'"),
            std::string::npos)
      << wrong.err;
  EXPECT_FALSE(std::filesystem::exists(c.dir().Join("empty.db")));

  // The restored coordinator takes scheduled copies itself (--backup-dir);
  // one that cannot write there does not start.
  const std::string copies = c.dir().Join("copies");
  auto no_folder = RunCommand("timeout 20 " + Bin("dfc-coordinator") + " --listen 127.0.0.1:0 --state " +
                              c.dir().Join("other") + " --backup-dir " + copies);
  EXPECT_EQ(no_folder.exit_code, 2);
  EXPECT_NE(no_folder.err.find("--backup-dir: '" + copies + "' does not exist"), std::string::npos) << no_folder.err;
  std::filesystem::create_directories(copies);
  const std::string addr = "127.0.0.1:" + std::to_string(PickFreePort());
  c.processes().Start({Bin("dfc-coordinator"), "--listen", addr, "--state", restored, "--backup-dir", copies},
                      "restored.log");
  const std::string dfc = testing::DfcBinary() + " --coordinator " + addr;
  testing::CommandResult got;
  for (int i = 0; i < 100 && (got = RunCommand(dfc + " status --json " + job)).exit_code != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_EQ(got.exit_code, 0) << got.err << c.processes().Log("restored.log");
  EXPECT_EQ(JsonString(got.out, "state"), "SUCCEEDED") << got.out;
  EXPECT_EQ(CountEpochs(got.out), 1) << got.out;
  std::string copy;
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        for (const auto& e : std::filesystem::directory_iterator(copies)) {
          if (e.path().extension() == ".db") copy = e.path().string();
        }
        return !copy.empty();
      },
      std::chrono::seconds(10)))
      << c.processes().Log("restored.log");
  EXPECT_NE(copy.find("/jobs-"), std::string::npos) << copy;
  std::filesystem::create_directories(c.dir().Join("from-copy"));
  std::filesystem::copy_file(copy, c.dir().Join("from-copy/jobs.db"));
  auto again = RunCommand(Bin("dfc-coordinator") + " --state " + c.dir().Join("from-copy") + " --backup-to " +
                          c.dir().Join("again.db"));
  EXPECT_NE(again.out.find("backed up 1 job(s)"), std::string::npos) << again.out << again.err;
}

// Restoring a backup (docs/DEPLOY.md section 7): refused while the
// coordinator runs on the state; a file that is not a state database changes
// nothing; then the coordinator, started again on the restored state, knows
// the job the backup held, and the database it replaced, moved aside with its
// WAL (the coordinator was SIGKILLed), opens as it was.
TEST(ClusterTest, ARestoredBackupReplacesTheStateAndTheReplacedOneIsKept) {
  Cluster c(1);
  std::string status;
  const std::string job = OneEpochThatSucceeded(c, testing::SyntheticShards(c.dir(), 16), &status);
  ASSERT_FALSE(job.empty()) << status;
  const std::string state = c.dir().Join("state");
  const std::string copy = c.dir().Join("copy.db");
  auto backup = RunCommand(Bin("dfc-coordinator") + " --state " + state + " --backup-to " + copy);
  ASSERT_EQ(backup.exit_code, 0) << backup.err;
  auto deleted = RunCommand(c.Dfc("delete " + job));  // the state and the copy now differ
  ASSERT_EQ(deleted.exit_code, 0) << deleted.err;
  const std::string restore = "timeout 20 " + Bin("dfc-coordinator") + " --state " + state + " --restore-from ";
  auto running = RunCommand(restore + copy);
  EXPECT_EQ(running.exit_code, 2);
  EXPECT_NE(running.err.find("is in use by another dfc-coordinator"), std::string::npos) << running.err;

  c.KillCoordinator();
  const std::string junk = c.dir().Join("jobs-20260101T000000Z.db");
  testing::WriteFileOrDie(junk, "named like a copy, but not a database\n");
  auto refused = RunCommand(restore + junk);
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_NE(refused.err.find("--restore-from: cannot restore '" + junk + "'"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("file is not a database"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("nothing was changed"), std::string::npos) << refused.err;
  for (const auto& e : std::filesystem::directory_iterator(state)) {
    EXPECT_EQ(e.path().filename().string().rfind("before-restore-", 0), std::string::npos) << e.path();
  }

  auto restored = RunCommand(restore + copy);
  ASSERT_EQ(restored.exit_code, 0) << restored.err;
  EXPECT_NE(restored.out.find("restored 1 job(s) from " + copy), std::string::npos) << restored.out;
  const std::string said = "the database it replaced is in ";
  const size_t at = restored.out.find(said);
  ASSERT_NE(at, std::string::npos) << restored.out;
  const std::string aside = restored.out.substr(at + said.size(), restored.out.find('\n', at) - at - said.size());
  EXPECT_TRUE(std::filesystem::exists(aside + "/jobs.db")) << aside;
  EXPECT_FALSE(std::filesystem::exists(state + "/jobs.db-wal")) << "the replaced database's WAL stayed beside the copy";
  auto before = RunCommand(Bin("dfc-coordinator") + " --state " + aside + " --backup-to " + c.dir().Join("before.db"));
  EXPECT_NE(before.out.find("backed up 0 job(s)"), std::string::npos) << before.out << before.err;

  c.StartCoordinator();
  testing::CommandResult got;
  ASSERT_TRUE(testing::WaitUntil([&] { return (got = RunCommand(c.Dfc("status --json " + job))).exit_code == 0; },
                                 std::chrono::seconds(10)))
      << got.err << c.processes().Log("coordinator.log");
  EXPECT_EQ(JsonString(got.out, "state"), "SUCCEEDED") << got.out;
  EXPECT_EQ(CountEpochs(got.out), 1) << got.out;
}

// A backup taken while a job ran (its rank held still for the copy), then
// restored after the job had finished: the record says RUNNING, before its
// last epoch; the outputs hold 4 epochs and a final checkpoint. The restored
// coordinator ends the job SUCCEEDED with its 4 epochs from what its run left.
TEST(ClusterTest, AJobThatFinishedAfterTheBackupEndsSucceededAfterARestore) {
  Cluster::Options o{1};
  // The copy's ranks are long gone: none will be reported back.
  o.coordinator_flags.insert(o.coordinator_flags.end(), {"--reattach-timeout", "3"});
  Cluster c(o);
  const std::string shards = testing::SyntheticShards(c.dir(), 48);
  auto submitted = RunCommand(c.Dfc("submit --json --model meso4 --data " + shards + " --epochs 4 --threads 1"));
  ASSERT_EQ(submitted.exit_code, 0) << submitted.err;
  const std::string job = JsonString(submitted.out, "job_id");
  std::string status;
  ASSERT_TRUE(testing::WaitUntil(
      [&] { return CountEpochs(status = RunCommand(c.Dfc("status --json " + job)).out) >= 1; },
      std::chrono::seconds(240)))
      << status;
  const pid_t rank = c.RankPid(job, 1, 0);
  ASSERT_GT(rank, 0);
  ASSERT_EQ(::kill(rank, SIGSTOP), 0);
  status = RunCommand(c.Dfc("status --json " + job)).out;
  const std::string copy = c.dir().Join("copy.db");
  auto backup = RunCommand(Bin("dfc-coordinator") + " --state " + c.dir().Join("state") + " --backup-to " + copy);
  ASSERT_EQ(::kill(rank, SIGCONT), 0);
  ASSERT_EQ(backup.exit_code, 0) << backup.err;
  ASSERT_EQ(JsonString(status, "state"), "RUNNING") << status;
  ASSERT_LT(CountEpochs(status), 4) << status;
  status = WaitForState(c, job, "SUCCEEDED", 240);
  ASSERT_EQ(JsonString(status, "state"), "SUCCEEDED") << status;

  c.KillCoordinator();
  auto restored = RunCommand("timeout 20 " + Bin("dfc-coordinator") + " --state " + c.dir().Join("state") +
                             " --restore-from " + copy);
  ASSERT_EQ(restored.exit_code, 0) << restored.err;
  c.StartCoordinator();
  auto watch = RunCommand(c.Dfc("watch --timeout 240 " + job));
  EXPECT_EQ(watch.exit_code, 0) << watch.out << watch.err << c.processes().Log("coordinator.log");
  status = RunCommand(c.Dfc("status --json " + job)).out;
  EXPECT_EQ(JsonString(status, "state"), "SUCCEEDED") << status;
  EXPECT_EQ(CountEpochs(status), 4) << status;
}

// Certificates renewed on disk while the cluster runs, through a move to a
// new CA (as cert-manager or an operator updating the Secret does): the
// coordinator serves its renewed certificate without a restart, and a
// worker that was never restarted uses its renewed certificate and CA when
// it next connects (to the coordinator, restarted to trust the new CA alone).
TEST(ClusterTest, CertificatesRenewedOnDiskAreUsedWithoutRestartingTheWorker) {
  testing::Pki pki;
  testing::TempDir files;
  auto install = [&](const std::string& who, const std::string& ca, const std::string& identity) {
    std::filesystem::create_directories(files.Join(who));
    testing::Pki::Install(pki[ca + ".pem"], files.Join(who + "/ca.crt"));
    testing::Pki::Install(pki[identity + ".key"], files.Join(who + "/tls.key"));
    testing::Pki::Install(pki[identity + ".pem"], files.Join(who + "/tls.crt"));
  };
  auto tls = [&](const std::string& who) {
    return std::vector<std::string>{"--tls-ca", files.Join(who + "/ca.crt"), "--tls-cert", files.Join(who + "/tls.crt"),
                                    "--tls-key", files.Join(who + "/tls.key")};
  };
  install("coordinator", "both", "server1");
  install("worker", "ca1", "client1");
  install("user", "ca1", "client1");
  testing::WriteFileOrDie(files.Join("token"), "users-token\n");
  testing::WriteFileOrDie(files.Join("worker-token"), "workers-token\n");
  Cluster::Options o;
  o.workers = 1;
  for (const std::string& flag : tls("coordinator")) o.coordinator_flags.push_back(flag);
  o.coordinator_flags.insert(o.coordinator_flags.end(), {"--token-file", files.Join("token"), "--worker-token-file",
                                                         files.Join("worker-token")});
  for (const std::string& flag : tls("worker")) o.worker_flags.push_back(flag);
  o.worker_flags.insert(o.worker_flags.end(), {"--token-file", files.Join("worker-token")});
  for (const std::string& flag : tls("user")) o.dfc_flags += flag + " ";
  o.dfc_flags += "--token-file " + files.Join("token");
  Cluster c(o);
  ASSERT_TRUE(c.WaitForLiveWorkers(1, 1)) << c.processes().Log("worker-0.log") << c.processes().Log("coordinator.log");

  install("coordinator", "both", "server2");
  install("worker", "ca2", "client2");
  install("user", "ca2", "client2");
  // The user's dfc now trusts CA 2 alone: it gets through once the running
  // coordinator serves its renewed certificate.
  testing::CommandResult list;
  const auto renewed = std::chrono::steady_clock::now();
  for (int i = 0; i < 12 * kTlsRefreshSeconds && (list = RunCommand(c.Dfc("list"))).exit_code != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_EQ(list.exit_code, 0) << list.err;
  std::printf("the running coordinator served its renewed certificate %.1f s after it was written\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - renewed).count());
  // It is restarted trusting CA 2 alone: the worker is back only if it
  // presents its renewed certificate and trusts the renewed CA.
  testing::Pki::Install(pki["ca2.pem"], files.Join("coordinator/ca.crt"));
  c.KillCoordinator();
  c.StartCoordinator();
  EXPECT_TRUE(c.WaitForLiveWorkers(1, 6 * kTlsRefreshSeconds)) << c.processes().Log("worker-0.log");
  // A client still holding CA 1's certificate is refused.
  auto stale = RunCommand(testing::DfcBinary() + " --coordinator " + c.address() + " --tls-ca " + pki["ca2.pem"] +
                          " --tls-cert " + pki["client1.pem"] + " --tls-key " + pki["client1.key"] +
                          " --token-file " + files.Join("token") + " list");
  EXPECT_NE(stale.exit_code, 0) << stale.out;
}

// Tokens rotated while the cluster runs (a leaked one replaced): each
// process reads its token file again when it changes, a server accepting
// any line and a client sending the first, so neither the coordinator nor
// the worker is restarted, and the worker stays live throughout.
TEST(ClusterTest, TokensAreRotatedWithoutRestartingAnything) {
  testing::TempDir files;
  const std::string users = files.Join("users"), workers = files.Join("workers");
  const auto put = testing::ReplaceFileOrDie;
  put(users, "old-user\n");
  put(workers, "old-worker\n");
  Cluster::Options o;
  o.workers = 1;
  o.operator_endpoints = true;
  o.coordinator_flags.insert(o.coordinator_flags.end(), {"--token-file", users, "--worker-token-file", workers});
  o.worker_flags.insert(o.worker_flags.end(), {"--token-file", workers});  // one Secret for both sides
  o.dfc_flags = "--token-file " + users;
  Cluster c(o);
  auto list_with = [&](const std::string& token) {
    put(files.Join("mine"), token + "\n");
    return RunCommand(testing::DfcBinary() + " --coordinator " + c.address() + " --token-file " + files.Join("mine") +
                      " list");
  };
  ASSERT_EQ(list_with("old-user").exit_code, 0) << list_with("old-user").err;
  ASSERT_NE(list_with("new-user").exit_code, 0);
  // The users' token: the new one is added, then the old one dropped.
  put(users, "old-user\nnew-user\n");
  EXPECT_TRUE(testing::WaitUntil([&] { return list_with("new-user").exit_code == 0; }, std::chrono::seconds(5)))
      << list_with("new-user").err;
  EXPECT_EQ(list_with("old-user").exit_code, 0);
  put(users, "new-user\n");
  EXPECT_TRUE(testing::WaitUntil([&] { return list_with("old-user").exit_code != 0; }, std::chrono::seconds(5)));
  const auto refused = list_with("old-user");
  EXPECT_NE(refused.err.find("a valid bearer token is required"), std::string::npos) << refused.err;
  EXPECT_EQ(list_with("new-user").exit_code, 0);
  auto dashboard = [&](const std::string& token) {
    return RunCommand("curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer " + token + "' " +
                      c.dashboard() + "/api/jobs").out;
  };
  EXPECT_EQ(dashboard("new-user"), "200");
  EXPECT_EQ(dashboard("old-user"), "401");
  // The workers' token, one file read by both sides: the new token added
  // second, made first, the old one dropped, each step a few heartbeats apart.
  put(workers, "old-worker\nnew-worker\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  put(workers, "new-worker\nold-worker\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  put(workers, "new-worker\n");
  // Heartbeats refused for --worker-timeout-ms (1.5 s) would have given the worker up.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  EXPECT_TRUE(c.WaitForLiveWorkers(1, 1));
  EXPECT_EQ(c.processes().Log("worker-0.log").find("bearer token"), std::string::npos)
      << c.processes().Log("worker-0.log");
  // A users' token put in the workers' file by mistake is refused on both
  // sides (as it would be at start), and taken again once it is out.
  put(workers, "new-worker\nnew-user\n");
  EXPECT_TRUE(testing::WaitUntil([&] { return list_with("new-user").exit_code != 0; }, std::chrono::seconds(5)))
      << "a token held by both files listed";
  EXPECT_NE(c.processes().Log("coordinator.log").find("--token-file and --worker-token-file hold the same token"),
            std::string::npos)
      << c.processes().Log("coordinator.log");
  put(workers, "new-worker\n");
  EXPECT_TRUE(testing::WaitUntil([&] { return list_with("new-user").exit_code == 0; }, std::chrono::seconds(5)))
      << list_with("new-user").err;
  // A worker still holding the old token is refused.
  put(files.Join("stale"), "old-worker\n");
  c.processes().Start({Bin("dfc-worker"), "--coordinator", c.address(), "--work-dir", files.Join("stale-work"),
                       "--cpu-slots", "1", "--token-file", files.Join("stale")},
                      "stale-worker.log");
  EXPECT_TRUE(testing::WaitUntil([&] {
    return c.processes().Log("stale-worker.log").find("a valid bearer token is required") != std::string::npos;
  }, std::chrono::seconds(10))) << c.processes().Log("stale-worker.log");
  EXPECT_FALSE(c.WaitForLiveWorkers(2, 2));
}

}  // namespace
}  // namespace dfc
