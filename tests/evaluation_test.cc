// The evaluation API as users reach it: a real dfc-coordinator and dfc-server
// on loopback, `dfc import/evaluate/predict`, and raw gRPC streams.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <sstream>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/rpc/rpc_util.h"
#include "common/subprocess.h"
#include "dfc/v1/dfc.grpc.pb.h"
#include "tests/test_cluster.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

using testing::RunCommand;
namespace fs = std::filesystem;

using testing::TestData;
using testing::MakeTestData;

// A coordinator and one dfc-server with free ports and their own state; the
// test weights imported as "meso-df"; `dfc predict`'s numbers for the test images.
class EvaluationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = MakeTestData(dir_);
    ASSERT_EQ(data_.images.size(), 4u);
    auto predict = RunCommand(testing::DfcBinary() + " predict --model mesoinception4 --weights " + data_.weights +
                              " " + data_.images[0] + " " + data_.images[1] + " " + data_.images[2] + " " +
                              data_.images[3]);
    ASSERT_EQ(predict.exit_code, 0) << predict.err;
    for (const testing::PredictLine& l : testing::ParsePredictions(predict.out)) expected_[l.path] = {l.p, l.logit};
    ASSERT_EQ(expected_.size(), 4u) << predict.out;
    testing::TestCluster::Options o;
    o.servers = 1;
    o.server_flags = {"--device", "cpu", "--eval-max-batch", "8", "--eval-max-delay-us", "2000"};
    for (const std::string& f : ExtraServerFlags()) o.server_flags.push_back(f);
    cluster_ = std::make_unique<testing::TestCluster>(o);  // returns once the server is SERVING
    channel_ = grpc::CreateChannel(cluster_->server_address(0), grpc::InsecureChannelCredentials());
    stub_ = v1::EvaluationService::NewStub(channel_);
    auto r = RunCommand(Dfc("import --name meso-df --model mesoinception4 --weights " + data_.weights));
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  virtual std::vector<std::string> ExtraServerFlags() const { return {}; }
  std::string Dfc(const std::string& args) const { return cluster_->Dfc(args); }
  // The server still answers: health-checked by a unary call.
  bool Healthy() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ListModelsResponse resp;
    return stub_->ListModels(&ctx, v1::ListModelsRequest(), &resp).ok() && resp.models_size() == 1;
  }

  double Logit(int i) { return expected_[data_.images[static_cast<size_t>(i)]].second; }
  double PReal(int i) { return expected_[data_.images[static_cast<size_t>(i)]].first; }

  testing::TempDir dir_;
  TestData data_;
  std::map<std::string, std::pair<double, double>> expected_;
  std::unique_ptr<testing::TestCluster> cluster_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::EvaluationService::Stub> stub_;
};

TEST_F(EvaluationTest, ImportedModelGivesTheSameNumbersAsPredict) {
  auto eval = RunCommand(Dfc("evaluate --json --model meso-df --out " + dir_.Join("p.csv") + " " + data_.folder));
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  auto summary = nlohmann::json::parse(eval.out);
  const auto csv = testing::SplitLines(testing::ReadFileOrDie(dir_.Join("p.csv")));
  EXPECT_EQ(summary["count"].get<size_t>() + 1, csv.size());
  EXPECT_EQ(summary["errors"], 0);
  if (data_.authors) {  // the authors' weights separate the four samples
    EXPECT_EQ(summary["count"], 4);
    EXPECT_DOUBLE_EQ(summary["accuracy"].get<double>(), 1.0);
    EXPECT_DOUBLE_EQ(summary["auc"].get<double>(), 1.0);
  }
  ASSERT_GE(csv.size(), 5u);
  EXPECT_EQ(csv[0], "path,label,p_real,logit,error");
  int compared = 0;
  for (size_t i = 1; i < csv.size(); ++i) {
    std::vector<std::string> f;
    std::stringstream ss(csv[i]);
    for (std::string field; std::getline(ss, field, ',');) f.push_back(field);
    ASSERT_GE(f.size(), 4u) << csv[i];
    EXPECT_EQ(f[1], f[0].find("/df/") != std::string::npos ? "df" : "real");
    if (!expected_.count(f[0])) continue;
    // The server batches these with other images, dfc predict did not.
    EXPECT_NEAR(std::stod(f[2]), expected_[f[0]].first, testing::ProbabilityTolerance()) << f[0];
    EXPECT_NEAR(std::stod(f[3]), expected_[f[0]].second, testing::LogitTolerance(expected_[f[0]].second)) << f[0];
    ++compared;
  }
  EXPECT_EQ(compared, 4);
  // The catalogue records the uploaded file's digest, as sha256sum prints it.
  auto sum = RunCommand("sha256sum " + data_.weights);
  auto models = RunCommand(Dfc("models --json"));
  ASSERT_EQ(models.exit_code, 0) << models.err;
  const auto listed = nlohmann::json::parse(models.out)["models"];
  ASSERT_EQ(listed.size(), 1u) << models.out;
  EXPECT_EQ(listed[0]["sha256"], sum.out.substr(0, 64)) << models.out;
}

TEST_F(EvaluationTest, BadItemsGetErrorsTheRestGoOn) {
  const std::string good = testing::ReadFileOrDie(data_.images[0]);
  const std::string good2 = testing::ReadFileOrDie(data_.images[3]);
  struct Case {
    std::string id, bytes, error;  // error: a substring of the expected error; empty = a prediction
    int label = -1;
  };
  std::vector<Case> cases = {
      {"good-1", good, ""},
      {"text", "this is a text file, not an image\n", "not a supported image"},
      {"truncated", good.substr(0, good.size() / 2), "truncated JPEG"},
      {"huge-png", testing::PngHeader(20000, 20000), "20000x20000"},
      {"empty", "", "empty image"},
      {"bad-label", good, "label 7", 7},
      {"good-2", good2, "", 1},
  };
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto stream = stub_->Evaluate(&ctx);
  v1::EvaluateRequest req;
  req.mutable_model()->set_name("meso-df");
  ASSERT_TRUE(stream->Write(req));
  for (const Case& c : cases) {
    v1::EvaluateRequest r;
    r.set_id(c.id);
    r.set_image(c.bytes);
    if (c.label >= 0) r.set_label(c.label);
    ASSERT_TRUE(stream->Write(r));
  }
  {
    v1::EvaluateRequest r;  // a model named again mid-stream is an error for that item only
    r.set_id("second-model");
    r.mutable_model()->set_name("meso-df");
    r.set_image(good);
    ASSERT_TRUE(stream->Write(r));
  }
  stream->WritesDone();
  std::map<std::string, v1::EvaluateResult> got;
  v1::EvaluateResponse resp;
  int results = 0;
  while (stream->Read(&resp)) {
    if (resp.has_model()) {
      if (resp.model().state() == v1::MODEL_LOADING) continue;  // still loading
      EXPECT_EQ(resp.model().arch(), "mesoinception4");
      EXPECT_EQ(resp.model().input_size(), 256);
      continue;
    }
    ++results;
    got[resp.result().id()] = resp.result();
  }
  grpc::Status st = stream->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(results, static_cast<int>(cases.size()) + 1) << "one result per item";
  EXPECT_NE(got["second-model"].error().find("only the first message may name the model"), std::string::npos)
      << got["second-model"].error();
  for (const Case& c : cases) {
    ASSERT_TRUE(got.count(c.id)) << c.id;
    const v1::EvaluateResult& r = got[c.id];
    if (c.error.empty()) {
      EXPECT_EQ(r.error(), "") << c.id;
    } else {
      EXPECT_NE(r.error().find(c.error), std::string::npos) << c.id << ": " << r.error();
    }
  }
  EXPECT_NEAR(got["good-1"].p_real(), PReal(0), 1e-5);
  EXPECT_TRUE(got["good-2"].has_label());
  EXPECT_EQ(got["good-2"].label(), 1);
  EXPECT_NEAR(got["good-2"].p_real(), PReal(3), 1e-5);
  EXPECT_TRUE(Healthy());
}

TEST_F(EvaluationTest, StreamLevelErrorsNameTheProblem) {
  {
    grpc::ClientContext ctx;
    auto stream = stub_->Evaluate(&ctx);
    v1::EvaluateRequest r;
    r.set_id("x");
    r.set_image("abc");
    stream->Write(r);
    stream->WritesDone();
    v1::EvaluateResponse resp;
    while (stream->Read(&resp)) {
    }
    grpc::Status st = stream->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(st.error_message().find("first message must name the model"), std::string::npos) << st.error_message();
  }
  auto r = RunCommand(Dfc("evaluate --model no-such-model " + data_.folder));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("no imported model 'no-such-model'"), std::string::npos) << r.err;
  r = RunCommand(Dfc("evaluate --job job-000000000000 " + data_.folder));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("no job"), std::string::npos) << r.err;
  // Weights of another architecture are refused at import, naming the problem; nothing is registered.
  r = RunCommand(Dfc("import --name wrong --model meso4 --weights " + data_.weights));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find(data_.authors ? "do not load as meso4" : "is a mesoinception4, not a meso4"), std::string::npos)
      << r.err;
  r = RunCommand(Dfc("import --name meso-df --model mesoinception4 --weights " + data_.weights));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("exists"), std::string::npos) << r.err;
  r = RunCommand(Dfc("import --name ../evil --model mesoinception4 --weights " + data_.weights));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  // A file that is no weights at all: the error names the problem, not where
  // the server keeps uploads.
  testing::WriteFileOrDie(dir_.Join("junk.h5"), std::string(4096, 'j'));
  r = RunCommand(Dfc("import --name junk --model mesoinception4 --weights " + dir_.Join("junk.h5")));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("the uploaded file"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find(cluster_->dir().Join("state")), std::string::npos) << "a server path leaked: " << r.err;
  // A FIFO as weights is refused by the client at once (it named no cause before).
  ASSERT_EQ(::mkfifo(dir_.Join("fifo.h5").c_str(), 0644), 0);
  r = RunCommand(Dfc("import --name fifo --model mesoinception4 --weights " + dir_.Join("fifo.h5")));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("--weights: '" + dir_.Join("fifo.h5") + "' is a FIFO, not a regular file"), std::string::npos)
      << r.err;
  EXPECT_TRUE(Healthy());
}

TEST_F(EvaluationTest, ConcurrentStreamsGetOnlyTheirOwnResults) {
  std::vector<std::string> images;
  for (const auto& f : data_.images) images.push_back(testing::ReadFileOrDie(f));
  const double expected[4] = {Logit(0), Logit(1), Logit(2), Logit(3)};  // `dfc predict`
  constexpr int kStreams = 8, kPerStream = 12;
  std::vector<std::map<std::string, float>> got(kStreams);
  std::vector<grpc::Status> status(kStreams);
  std::vector<std::thread> threads;
  for (int s = 0; s < kStreams; ++s) {
    threads.emplace_back([&, s] {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
      auto stream = stub_->Evaluate(&ctx);
      std::thread reader([&] {
        v1::EvaluateResponse resp;
        while (stream->Read(&resp)) {
          if (resp.has_result()) got[s][resp.result().id()] = resp.result().logit();
        }
      });
      v1::EvaluateRequest req;
      req.mutable_model()->set_name("meso-df");
      stream->Write(req);
      for (int i = 0; i < kPerStream; ++i) {
        v1::EvaluateRequest r;
        r.set_id("s" + std::to_string(s) + "-" + std::to_string(i));
        r.set_image(images[(s + i) % 4]);
        stream->Write(r);
      }
      stream->WritesDone();
      reader.join();
      status[s] = stream->Finish();
    });
  }
  for (auto& t : threads) t.join();
  for (int s = 0; s < kStreams; ++s) {
    ASSERT_TRUE(status[s].ok()) << status[s].error_message();
    ASSERT_EQ(got[s].size(), static_cast<size_t>(kPerStream)) << "stream " << s;
    for (int i = 0; i < kPerStream; ++i) {
      const std::string id = "s" + std::to_string(s) + "-" + std::to_string(i);
      ASSERT_TRUE(got[s].count(id)) << id;
      EXPECT_NEAR(got[s][id], expected[(s + i) % 4], 1e-4) << id;
    }
  }
  EXPECT_TRUE(Healthy());
}

TEST_F(EvaluationTest, ACancelledStreamLeavesTheServerServing) {
  const std::string image = testing::ReadFileOrDie(data_.images[2]);
  {
    grpc::ClientContext ctx;
    auto stream = stub_->Evaluate(&ctx);
    v1::EvaluateRequest req;
    req.mutable_model()->set_name("meso-df");
    stream->Write(req);
    for (int i = 0; i < 200; ++i) {
      v1::EvaluateRequest r;
      r.set_id(std::to_string(i));
      r.set_image(image);
      if (!stream->Write(r)) break;  // back-pressure may stop us earlier; that is fine
      if (i == 50) break;
    }
    ctx.TryCancel();
    v1::EvaluateResponse resp;
    while (stream->Read(&resp)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  auto r = RunCommand(Dfc("evaluate --json --concurrency 2 --model meso-df " + data_.images[0] + " " +
                          data_.images[3]));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["count"], 2);
  EXPECT_TRUE(Healthy());
}

TEST_F(EvaluationTest, EvaluateCliReportsBadFilesAndKeepsGoing) {
  testing::WriteFileOrDie(dir_.Join("in/notes.png"), "not an image");
  fs::copy_file(data_.images[0], dir_.Join("in/a.jpg"));
  // Neither a link to itself (ELOOP: the throwing listing ended dfc) nor a
  // FIFO is an image to send.
  fs::create_symlink("self.jpg", dir_.Join("in/self.jpg"));
  ASSERT_EQ(::mkfifo(dir_.Join("in/fifo.jpg").c_str(), 0644), 0);
  auto r = RunCommand(Dfc("evaluate --json --concurrency 3 --model meso-df --out " + dir_.Join("o.csv") + " " +
                          dir_.Join("in") + " " + dir_.Join("in/missing.jpg")));
  // A missing path is refused before anything is sent.
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("missing.jpg"), std::string::npos);
  r = RunCommand(Dfc("evaluate --json --concurrency 3 --model meso-df --out " + dir_.Join("o.csv") + " " +
                     dir_.Join("in")));
  EXPECT_EQ(r.exit_code, 4) << r.err;  // partial: one bad image
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["count"], 2);
  EXPECT_EQ(j["errors"], 1);
  EXPECT_NE(r.err.find("notes.png: image: not a supported image"), std::string::npos) << r.err;
  EXPECT_NE(testing::ReadFileOrDie(dir_.Join("o.csv")).find("not a supported image"), std::string::npos);
}

// A replica that takes one Evaluate stream at a time (--eval-max-streams 1),
// as a busy serving tier is for a client that comes late.
class BusyServerTest : public EvaluationTest {
 protected:
  std::vector<std::string> ExtraServerFlags() const override { return {"--eval-max-streams", "1"}; }
};

// The streams of one `dfc evaluate` beyond the replica's limit are refused;
// their images wait for a place instead of failing (they did: "no result:
// the stream ended: too many open evaluation streams", exit 4).
TEST_F(BusyServerTest, StreamsBeyondAReplicasLimitWaitForAPlaceAndNoImageFails) {
  std::string paths;
  for (int i = 0; i < 40; ++i) {
    const fs::path from = data_.images[static_cast<size_t>(i % 4)];
    const std::string to = dir_.Join("many/" + std::to_string(i) + from.extension().string());
    fs::create_directories(fs::path(to).parent_path());
    fs::copy_file(from, to);
    paths += " " + to;
  }
  // One image in flight per stream: the first stream is still at work when
  // the other two open (100 ms apart), and each of those takes an image.
  auto r = RunCommand(Dfc("evaluate --json --concurrency 3 --max-in-flight 1 --model meso-df" + paths));
  std::printf("%s", r.err.c_str());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["count"], 40);
  EXPECT_EQ(j["errors"], 0) << r.out;
  EXPECT_EQ(j["retried"], 0) << "an image refused before it was evaluated is not 'sent again': " << r.out;
  EXPECT_NE(r.err.find("dfc: a replica is busy (too many open evaluation streams (limit 1)); waiting for a place, "
                       "for at most 120 s"),
            std::string::npos)
      << "no stream was refused, so nothing was tested: " << r.err;
  EXPECT_TRUE(Healthy());
}

// While another client holds the replica's one place, `dfc evaluate` waits
// for at most --stall-timeout and then exits 6 (try again later), not 2 (bad
// input, as it did); once the place is given back, a waiting client gets it.
TEST_F(BusyServerTest, AClientWaitsForABusyReplicaAndGivesUpAfterTheStallTimeout) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto held = stub_->Evaluate(&ctx);
  v1::EvaluateRequest first;
  first.mutable_model()->set_name("meso-df");
  v1::EvaluateResponse head;
  ASSERT_TRUE(held->Write(first) && held->Read(&head)) << "the holding stream was not served";

  const auto start = std::chrono::steady_clock::now();
  auto r = RunCommand(Dfc("evaluate --stall-timeout 3 --model meso-df " + data_.images[0]));
  const double waited_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("gave up after %.1f s: %s", waited_s, r.err.c_str());
  EXPECT_EQ(r.exit_code, 6) << r.err;
  EXPECT_NE(r.err.find("dfc: the evaluation servers stayed busy for 3 s (--stall-timeout): too many open evaluation "
                       "streams (limit 1); try again later"),
            std::string::npos)
      << r.err;
  EXPECT_GE(waited_s, 3.0);

  testing::CommandResult late;
  std::thread client([&] { late = RunCommand(Dfc("evaluate --json --model meso-df " + data_.folder)); });
  std::this_thread::sleep_for(std::chrono::seconds(2));
  held->WritesDone();
  while (held->Read(&head)) {
  }
  EXPECT_TRUE(held->Finish().ok());
  client.join();
  ASSERT_EQ(late.exit_code, 0) << late.err;
  EXPECT_NE(late.err.find("a replica is busy"), std::string::npos) << "it never waited: " << late.err;
  auto j = nlohmann::json::parse(late.out);
  EXPECT_EQ(j["count"], 4);
  EXPECT_EQ(j["errors"], 0) << late.out;
}

}  // namespace
}  // namespace dfc
