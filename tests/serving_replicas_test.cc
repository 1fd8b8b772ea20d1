// The evaluation tier as deployed: a dfc-coordinator and two dfc-server
// replicas as separate processes on loopback, reached through `dfc`.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/rpc/rpc_util.h"
#include "common/subprocess.h"
#include "dfc/v1/dfc.grpc.pb.h"
#include "tests/test_cluster.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

namespace fs = std::filesystem;
using testing::RunCommand;


// A coordinator and two replicas sharing the models directory, as pods share the volume.
class ServingReplicasTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = testing::MakeTestData(dir_);
    testing::TestCluster::Options o;
    o.servers = 2;
    o.server_flags = {"--device", "cpu", "--eval-threads", "1"};
    cluster_ = std::make_unique<testing::TestCluster>(o);  // returns once both are SERVING
    for (int r = 0; r < 2; ++r) replicas_.push_back(cluster_->server_address(r));
  }
  // One channel per replica, kept: polling a busy replica stays quick.
  v1::ListModelsResponse Models(int r) {
    if (stubs_.empty()) {
      for (const auto& address : replicas_) {
        stubs_.push_back(v1::EvaluationService::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials())));
      }
    }
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListModelsResponse resp;
    EXPECT_TRUE(stubs_[r]->ListModels(&ctx, v1::ListModelsRequest(), &resp).ok());
    return resp;
  }
  std::string Dfc(const std::string& args) const { return cluster_->Dfc(args); }
  // path -> logit, from an evaluate CSV.
  std::map<std::string, double> CsvLogits(const std::string& csv_path, int* errors) {
    std::map<std::string, double> out;
    *errors = 0;
    const auto lines = testing::SplitLines(testing::ReadFileOrDie(csv_path));
    for (size_t i = 1; i < lines.size(); ++i) {
      std::vector<std::string> f;
      size_t start = 0;
      for (size_t k = 0; k <= lines[i].size(); ++k) {
        if (k == lines[i].size() || lines[i][k] == ',') {
          f.push_back(lines[i].substr(start, k - start));
          start = k + 1;
        }
      }
      EXPECT_EQ(f.size(), 5u) << lines[i];
      if (f.size() != 5) continue;
      EXPECT_EQ(out.count(f[0]), 0u) << f[0] << " answered twice";
      if (!f[4].empty()) ++*errors;
      else out[f[0]] = std::stod(f[3]);
    }
    return out;
  }

  // Evaluates 2,000 images over 4 streams, imported through A, and sends A
  // `sig` once it has answered some (SIGCONT after a SIGSTOP, once the run is
  // over). Every image must still be answered exactly once, some re-sent to B
  // (at most `max_resent`: A's streams' windows).
  testing::CommandResult EvaluateWhileASignalled(int sig, const std::string& flags, int max_resent);

  testing::TempDir dir_;
  testing::TestData data_;
  std::unique_ptr<testing::TestCluster> cluster_;
  std::vector<std::string> replicas_;
  std::vector<std::unique_ptr<v1::EvaluationService::Stub>> stubs_;
};

// Imported through replica A (the catalogue entry is written once, in the
// coordinator), evaluated through replica B: the logits of `dfc predict`.
TEST_F(ServingReplicasTest, AModelImportedThroughOneReplicaEvaluatesOnAnother) {
  auto r = RunCommand(Dfc("import --server " + replicas_[0] + " --name shared-meso --model mesoinception4 --weights " +
                          data_.weights));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // B knows it through the catalogue, not loaded yet.
  bool listed = false;
  const v1::ListModelsResponse before = Models(1);
  for (const auto& m : before.models()) {
    if (m.name() != "shared-meso") continue;
    listed = true;
    EXPECT_EQ(m.state(), v1::MODEL_STATE_UNSPECIFIED);
  }
  EXPECT_TRUE(listed);
  std::string images;
  for (const auto& i : data_.images) images += " " + i;
  auto predict = RunCommand(testing::DfcBinary() + " predict --model mesoinception4 --weights " + data_.weights + images);
  ASSERT_EQ(predict.exit_code, 0) << predict.err;
  auto eval = RunCommand(Dfc("evaluate --server " + replicas_[1] + " --model shared-meso --out " + dir_.Join("b.csv") +
                             images));
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  int errors = 0;
  auto got = CsvLogits(dir_.Join("b.csv"), &errors);
  EXPECT_EQ(errors, 0);
  const auto expected = testing::ParsePredictions(predict.out);
  ASSERT_EQ(expected.size(), data_.images.size());
  for (const auto& e : expected) {
    ASSERT_TRUE(got.count(e.path)) << e.path;
    // The replica batches the images as they arrive, dfc predict all at once.
    EXPECT_NEAR(got[e.path], e.logit, testing::LogitTolerance(e.logit)) << e.path;
  }
  EXPECT_EQ(Models(0).images_served(), 0);
  EXPECT_EQ(Models(1).images_served(), static_cast<int64_t>(data_.images.size()));
  // B decoded them in its confined dfc-decode processes (serving/decoder_pool.h).
  const std::vector<pid_t> decoders = testing::ChildPids(cluster_->server(1).pid(), "dfc-decode");
  for (pid_t child : decoders) {
    EXPECT_EQ(testing::ProcStatus(child, "Seccomp"), "2") << child;
    EXPECT_EQ(testing::ProcStatus(child, "NoNewPrivs"), "1") << child;
    for (const auto& e : testing::ProcStrings(child, "environ")) EXPECT_NE(e.rfind("DFC_", 0), 0u) << e;
    EXPECT_EQ(testing::ReadFileOrDie("/proc/" + std::to_string(child) + "/oom_score_adj"), "1000\n") << child;
  }
  EXPECT_FALSE(decoders.empty()) << "dfc-server started no dfc-decode process";
  // When memory runs out a decoder goes first, not the server.
  EXPECT_NE(testing::ReadFileOrDie("/proc/" + std::to_string(cluster_->server(1).pid()) + "/oom_score_adj"), "1000\n");
  const v1::ListModelsResponse after = Models(1);
  for (const auto& m : after.models()) {
    if (m.name() == "shared-meso") {
      EXPECT_EQ(m.state(), v1::MODEL_LOADED);
    }
  }
}

// 8 concurrent streams land on both replicas: without --server (`dfc evaluate`
// asks the coordinator for the replicas and places stream s on replica s mod
// N), and through gRPC's round_robin policy over a target of several
// addresses (--server ipv4:A,B, as dns:///NAME:PORT resolves a headless Service).
TEST_F(ServingReplicasTest, ConcurrentStreamsLandOnEveryReplica) {
  ASSERT_EQ(RunCommand(Dfc("import --server " + replicas_[1] + " --name m --model mesoinception4 --weights " +
                           data_.weights)).exit_code, 0);
  auto syn = RunCommand(testing::DfcBinary() + " synth --out " + dir_.Join("many") + " --count 32 --image-size 64");
  ASSERT_EQ(syn.exit_code, 0) << syn.err;
  int64_t streams_before[2] = {0, 0}, images_before[2] = {0, 0};
  for (const std::string& server : {std::string(), "ipv4:" + replicas_[0] + "," + replicas_[1]}) {
    auto eval = RunCommand(Dfc("evaluate --json --concurrency 8 --model m " +
                               (server.empty() ? "" : "--server " + server + " ") + dir_.Join("many")));
    ASSERT_EQ(eval.exit_code, 0) << server << ": " << eval.err;
    auto summary = nlohmann::json::parse(eval.out);
    EXPECT_EQ(summary["count"], 32);
    EXPECT_EQ(summary["errors"], 0);
    const v1::ListModelsResponse a = Models(0), b = Models(1);
    EXPECT_GT(a.streams_served(), streams_before[0]) << server << ": replica A served no stream";
    EXPECT_GT(b.streams_served(), streams_before[1]) << server << ": replica B served no stream";
    EXPECT_EQ(a.streams_served() - streams_before[0] + b.streams_served() - streams_before[1], 8) << server;
    EXPECT_EQ(a.images_served() - images_before[0] + b.images_served() - images_before[1], 32) << server;
    streams_before[0] = a.streams_served();
    streams_before[1] = b.streams_served();
    images_before[0] = a.images_served();
    images_before[1] = b.images_served();
  }
}

// A replica SIGKILLed mid-run fails only its own streams; `dfc evaluate`
// sends their unanswered images to the other replica and counts each once.
// A's two streams hold at most --max-in-flight (default 128) images each.
TEST_F(ServingReplicasTest, AReplicaKilledMidRunLosesNoImage) {
  EvaluateWhileASignalled(SIGKILL, "", 2 * 128);
}

// A replica SIGSTOPped mid-run keeps its connections open and answers
// nothing (as one with a hung GPU would): after --stall-timeout its streams
// are cancelled and their images go to the other replica. Without that the
// run would wait for --timeout and fail. With --max-in-flight 8 its two
// streams held at most 16 images (without the window, a frozen replica's
// streams hold hundreds, as much as the transport buffers).
TEST_F(ServingReplicasTest, AReplicaFrozenMidRunIsGivenUpAndLosesNoImage) {
  const auto eval = EvaluateWhileASignalled(SIGSTOP, "--stall-timeout 3 --timeout 240 --max-in-flight 8", 2 * 8);
  EXPECT_NE(eval.err.find("a replica answered nothing for 3 s"), std::string::npos) << eval.err;
}

testing::CommandResult ServingReplicasTest::EvaluateWhileASignalled(int sig, const std::string& flags,
                                                                    int max_resent) {
  testing::CommandResult eval;
  EXPECT_EQ(RunCommand(Dfc("import --server " + replicas_[0] + " --name m --model mesoinception4 --weights " +
                           data_.weights)).exit_code, 0);
  // A run long enough that A is signalled while the queue still holds images
  // (so A's streams have some outstanding) even when polling A is slow under
  // load: the queue lasts until all but the streams' windows are answered.
  constexpr int kImages = 2000;
  auto syn = RunCommand(testing::DfcBinary() + " synth --out " + dir_.Join("many") + " --count " +
                        std::to_string(kImages) + " --image-size 64");
  EXPECT_EQ(syn.exit_code, 0) << syn.err;
  std::atomic<bool> finished{false};
  std::thread client([&] {
    eval = RunCommand(Dfc("evaluate --json --concurrency 4 --model m " + flags + " --out " + dir_.Join("all.csv") +
                          " " + dir_.Join("many")));
    finished = true;
  });
  // Signal A once it has answered some images and the run is not over.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  int64_t served = 0;
  while (!finished && std::chrono::steady_clock::now() < deadline && served < 16) {
    served = Models(0).images_served();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const bool signalled = served >= 16 && !finished && cluster_->server(0).Signal(sig);
  client.join();
  if (signalled && sig == SIGSTOP) cluster_->server(0).Signal(SIGCONT);
  if (signalled && sig == SIGKILL) cluster_->server(0).Wait();
  EXPECT_GE(served, 16) << "replica A never got going: " << eval.err;
  EXPECT_TRUE(signalled) << "the run ended before the replica could be signalled; use more images";
  EXPECT_EQ(eval.exit_code, 0) << eval.err;
  if (eval.exit_code != 0) return eval;
  auto summary = nlohmann::json::parse(eval.out);
  EXPECT_EQ(summary["count"], kImages);
  EXPECT_EQ(summary["errors"], 0);
  EXPECT_GT(summary["retried"].get<int>(), 0) << eval.err;
  EXPECT_LE(summary["retried"].get<int>(), max_resent) << eval.err;
  int errors = 0;
  auto got = CsvLogits(dir_.Join("all.csv"), &errors);
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(got.size(), static_cast<size_t>(kImages));  // each image once (duplicates fail in CsvLogits)
  EXPECT_GT(Models(1).images_served(), 0);
  return eval;
}

}  // namespace
}  // namespace dfc
