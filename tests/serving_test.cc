// The serving tier's registry and Evaluate stream in one process, with a
// real gRPC server on loopback and real checkpoints; only the coordinator's
// catalogue is an in-memory stand-in (serving_replicas_test runs the real one).
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/rpc/rpc_util.h"
#include "data_shards/image_codec.h"
#include "dfc/v1/dfc.grpc.pb.h"
#include "models/checkpoint.h"
#include "models/detector.h"
#include "models/inference.h"
#include "serving/batcher.h"
#include "serving/evaluation_service.h"
#include "serving/model_registry.h"
#include "serving/weights_converter.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

// The server's thread limit here (dfc-server's default is kDefaultMaxRpcThreads).
constexpr int kMaxRpcThreads = 16;

// The coordinator's catalogue as a map (one class under test: the registry).
class MapCatalog final : public ModelCatalog {
 public:
  void Add(const std::string& name, const std::string& arch, const std::string& path) {
    std::lock_guard<std::mutex> lock(mu_);
    v1::CatalogEntry e;
    e.mutable_info()->set_name(name);
    e.mutable_info()->set_arch(arch);
    e.set_weights_path(path);
    entries_[name] = e;
  }
  absl::Status AnnounceServer(const std::string&) override { return absl::OkStatus(); }
  absl::StatusOr<v1::CatalogEntry> GetModel(const std::string& name) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("model: no imported model '", name, "'"));
    return it->second;
  }
  absl::StatusOr<v1::RegisterModelResponse> RegisterModel(const v1::RegisterModelRequest& r) override {
    std::lock_guard<std::mutex> lock(mu_);
    entries_[r.entry().info().name()] = r.entry();
    return v1::RegisterModelResponse();
  }
  absl::StatusOr<std::vector<v1::CatalogEntry>> ListModels() override {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<v1::CatalogEntry> out;
    for (const auto& [name, e] : entries_) out.push_back(e);
    return out;
  }
  absl::StatusOr<v1::JobOutput> GetJobOutput(const std::string& job_id) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) return absl::NotFoundError(absl::StrCat("no job ", job_id));
    return it->second;
  }
  void AddJob(const std::string& job_id, const std::string& arch, const std::string& output_dir) {
    std::lock_guard<std::mutex> lock(mu_);
    v1::JobOutput& j = jobs_[job_id];
    j.set_job_id(job_id);
    j.set_arch(arch);
    j.set_output_dir(output_dir);
    j.set_state(v1::SUCCEEDED);
  }

 private:
  std::mutex mu_;
  std::map<std::string, v1::CatalogEntry> entries_;
  std::map<std::string, v1::JobOutput> jobs_;
};

std::string SaveRandomCheckpoint(const std::string& arch, const std::string& path, int64_t epoch = 0) {
  auto model = MakeDetector(arch);
  EXPECT_TRUE(model.ok()) << model.status();
  CheckpointMeta meta;
  meta.arch = arch;
  meta.epoch = epoch;
  EXPECT_TRUE(SaveCheckpoint(path, **model, nullptr, meta).ok());
  return path;
}

// A served-weights file (what imports are stored as) of a random model.
std::string SaveRandomWeights(const std::string& arch, const std::string& path) {
  auto model = MakeDetector(arch);
  EXPECT_TRUE(model.ok()) << model.status();
  EXPECT_TRUE(SaveWeightsFile(path, **model, 0).ok());
  return path;
}

std::string TestImage(int seed) {
  RgbImage img;
  img.width = img.height = 64;
  img.pixels.resize(64 * 64 * 3);
  for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = static_cast<uint8_t>((i * 7 + seed * 31) % 251);
  auto png = EncodeImage(img, ".png", 90);
  EXPECT_TRUE(png.ok()) << png.status();
  return *png;
}

// A blocked load, released by the test.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, open = false;
  void Enter() {
    std::unique_lock<std::mutex> lock(mu);
    entered = true;
    cv.notify_all();
    cv.wait(lock, [&] { return open; });
  }
  bool WaitEntered() {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, std::chrono::seconds(60), [&] { return entered; });
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu);
    open = true;
    cv.notify_all();
  }
};

class ServingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    catalog_ = std::make_shared<MapCatalog>();
    catalog_->Add("warm", "mesoinception4", SaveRandomCheckpoint("mesoinception4", dir_.Join("warm.ckpt")));
    catalog_->Add("cold", "resnet50-vggface", SaveRandomCheckpoint("resnet50-vggface", dir_.Join("cold.ckpt")));
    testing::WriteFileOrDie(dir_.Join("broken.ckpt"), std::string(1000, 'x'));
    catalog_->Add("broken", "mesoinception4", dir_.Join("broken.ckpt"));
    catalog_->Add("served", "mesoinception4", SaveRandomWeights("mesoinception4", dir_.Join("served.dfcw")));
    Start(Options());
  }
  ModelRegistryOptions Options() {
    ModelRegistryOptions o;
    o.models_dir = dir_.Join("models");
    o.threads = 2;
    o.device = "cpu";
    o.converter.command = {ServerBinary(), "--convert-weights"};
    o.before_load = [this](const std::string& name) {
      if (name == "cold") gate_.Enter();
    };
    return o;
  }
  static std::string SiblingBinary(const std::string& name) {
    return (std::filesystem::path(testing::DfcBinary()).parent_path() / name).string();
  }
  static std::string ServerBinary() { return SiblingBinary("dfc-server"); }
  // (Re)starts the registry and its service on a fresh loopback port.
  void Start(const ModelRegistryOptions& o) {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    auto r = ModelRegistry::Create(o, catalog_);
    ASSERT_TRUE(r.ok()) << r.status();
    registry_ = std::move(*r);
    batcher_ = std::make_unique<InferenceBatcher>(InferenceBatcher::Options{});
    DecoderPoolOptions decoding;
    decoding.program = SiblingBinary("dfc-decode");
    auto decoders = DecoderPool::Start(decoding);
    ASSERT_TRUE(decoders.ok()) << decoders.status();
    decoders_ = std::move(*decoders);
    service_ = std::make_unique<EvaluationServiceImpl>(registry_.get(), batcher_.get(), decoders_.get(),
                                                       eval_options_, BearerToken(), "test-replica");
    port_ = 0;
    server_ = StartGrpcServer("127.0.0.1:0", grpc::InsecureServerCredentials(), {service_.get()}, &port_,
                              kMaxRpcThreads);
    ASSERT_NE(server_, nullptr);
    stub_ = v1::EvaluationService::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_), grpc::InsecureChannelCredentials()));
  }
  // An ImportModel stream of the file at `path`.
  grpc::Status Import(const std::string& name, const std::string& arch, const std::string& path,
                      v1::ModelInfo* info, const std::string& sha256 = "") {
    const std::string bytes = testing::ReadFileOrDie(path);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    auto stream = stub_->ImportModel(&ctx, info);
    v1::ImportModelRequest header;
    header.mutable_header()->set_name(name);
    header.mutable_header()->set_arch(arch);
    header.mutable_header()->set_size_bytes(static_cast<int64_t>(bytes.size()));
    header.mutable_header()->set_sha256(sha256);
    stream->Write(header);
    for (size_t at = 0; at < bytes.size(); at += 1 << 20) {
      v1::ImportModelRequest chunk;
      chunk.set_chunk(bytes.substr(at, 1 << 20));
      stream->Write(chunk);
    }
    stream->WritesDone();
    return stream->Finish();
  }
  // The models directory's entries (uploads and converter directories are temporary).
  std::vector<std::string> ModelsDirEntries() {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(dir_.Join("models"))) {
      out.push_back(e.path().filename().string());
    }
    return out;
  }
  void TearDown() override {
    gate_.Open();
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  // One stream of `n` images on `model`; the results received and the status.
  grpc::Status Evaluate(const std::string& model, int n, int* results) {
    v1::ModelRef ref;
    ref.set_name(model);
    return Evaluate(ref, n, results);
  }
  // Checkpoint `which` (best, latest, N) of job `job_id`.
  static v1::ModelRef JobCheckpoint(const std::string& job_id, const std::string& which) {
    v1::ModelRef ref;
    ref.mutable_job()->set_job_id(job_id);
    ref.mutable_job()->set_checkpoint(which);
    return ref;
  }
  grpc::Status Evaluate(const v1::ModelRef& model, int n, int* results) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(300));
    auto stream = stub_->Evaluate(&ctx);
    v1::EvaluateRequest first;
    *first.mutable_model() = model;
    stream->Write(first);
    for (int i = 0; i < n; ++i) {
      v1::EvaluateRequest r;
      r.set_image(TestImage(i));
      stream->Write(r);
    }
    stream->WritesDone();
    v1::EvaluateResponse resp;
    *results = 0;
    while (stream->Read(&resp)) *results += resp.has_result() && resp.result().error().empty();
    return stream->Finish();
  }

  std::map<std::string, v1::ModelInfo> Models() {
    grpc::ClientContext ctx;
    v1::ListModelsResponse resp;
    EXPECT_TRUE(stub_->ListModels(&ctx, v1::ListModelsRequest(), &resp).ok());
    std::map<std::string, v1::ModelInfo> out;
    for (const auto& m : resp.models()) out[m.name()] = m;
    return out;
  }

  testing::TempDir dir_;
  Gate gate_;
  EvaluationOptions eval_options_;  // Start's
  int port_ = 0;
  std::shared_ptr<MapCatalog> catalog_;
  std::unique_ptr<ModelRegistry> registry_;
  std::unique_ptr<InferenceBatcher> batcher_;
  std::unique_ptr<DecoderPool> decoders_;
  std::unique_ptr<EvaluationServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::EvaluationService::Stub> stub_;
};

// A stream whose model is loading hears so every loading_heartbeat, so that
// `dfc evaluate --stall-timeout` tells a long load (a conversion, a cold
// ResNet-50, a wait for a converter slot) from a frozen replica, which says
// nothing.
TEST_F(ServingTest, AStreamHearsThatItsModelIsLoading) {
  eval_options_.loading_heartbeat = std::chrono::milliseconds(100);
  Start(Options());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  auto stream = stub_->Evaluate(&ctx);
  v1::EvaluateRequest first;
  first.mutable_model()->set_name("cold");  // its load waits at the gate
  ASSERT_TRUE(stream->Write(first));
  v1::EvaluateResponse resp;
  for (int beats = 0; beats < 3; ++beats) {
    ASSERT_TRUE(stream->Read(&resp));
    ASSERT_TRUE(resp.has_model());
    EXPECT_EQ(resp.model().state(), v1::MODEL_LOADING);
  }
  gate_.Open();
  v1::EvaluateRequest image;
  image.set_id("0");
  image.set_image(TestImage(0));
  ASSERT_TRUE(stream->Write(image));
  stream->WritesDone();
  std::vector<v1::EvaluateResponse> rest;
  while (stream->Read(&resp)) rest.push_back(resp);
  ASSERT_TRUE(stream->Finish().ok());
  size_t at = 0;
  while (at < rest.size() && rest[at].has_model() && rest[at].model().state() == v1::MODEL_LOADING) ++at;
  ASSERT_EQ(rest.size(), at + 2) << "the model's description, then one result";
  EXPECT_EQ(rest[at].model().state(), v1::MODEL_LOADED);
  EXPECT_EQ(rest[at].model().name(), "cold");
  EXPECT_EQ(rest[at].model().input_size(), 224);
  EXPECT_EQ(rest[at + 1].result().id(), "0");
  EXPECT_TRUE(rest[at + 1].result().error().empty()) << rest[at + 1].result().error();

  // The client: a load of 4 s under --stall-timeout 1 is waited for, not
  // taken for a frozen replica.
  ModelRegistryOptions slow = Options();
  slow.before_load = [](const std::string& name) {
    if (name == "warm") std::this_thread::sleep_for(std::chrono::seconds(4));
  };
  eval_options_.loading_heartbeat = std::chrono::milliseconds(300);
  Start(slow);
  std::filesystem::create_directories(dir_.Join("images"));
  for (int i = 0; i < 3; ++i) testing::WriteFileOrDie(dir_.Join("images/" + std::to_string(i) + ".png"), TestImage(i));
  auto r = testing::RunCommand(absl::StrCat(testing::DfcBinary(), " evaluate --json --stall-timeout 1 --server 127.0.0.1:",
                                            port_, " --model warm ", dir_.Join("images")));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.err.find("answered nothing"), std::string::npos) << r.err;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["count"], 3);
  EXPECT_EQ(j["errors"], 0);
}

// A client that opens stream after stream (and never finishes them) gets
// RESOURCE_EXHAUSTED once the server's threads are all taken, instead of the
// server spawning threads until it runs out of memory; the streams already
// open still work, and once they end new ones are served again.
TEST_F(ServingTest, StreamsBeyondTheThreadLimitAreRefusedAndTheOthersGoOn) {
  struct Open {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientReaderWriter<v1::EvaluateRequest, v1::EvaluateResponse>> stream;
  };
  std::vector<std::unique_ptr<Open>> open;
  grpc::Status refused;
  for (int i = 0; i < 4 * kMaxRpcThreads && refused.ok(); ++i) {
    auto o = std::make_unique<Open>();
    o->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    o->stream = stub_->Evaluate(&o->ctx);
    v1::EvaluateRequest first;
    first.mutable_model()->set_name("warm");
    v1::EvaluateResponse head;
    // A served stream answers the model's description; a refused one ends.
    if (o->stream->Write(first) && o->stream->Read(&head)) {
      open.push_back(std::move(o));
    } else {
      refused = o->stream->Finish();
    }
  }
  RecordProperty("streams_served_at_once", static_cast<int>(open.size()));
  ASSERT_FALSE(refused.ok()) << open.size() << " streams open and none refused";
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << refused.error_message();
  EXPECT_GE(open.size(), 1u);
  EXPECT_LT(open.size(), static_cast<size_t>(kMaxRpcThreads));
  // An open stream still evaluates.
  v1::EvaluateRequest image;
  image.set_id("0");
  image.set_image(TestImage(0));
  ASSERT_TRUE(open[0]->stream->Write(image));
  v1::EvaluateResponse answer;
  ASSERT_TRUE(open[0]->stream->Read(&answer));
  EXPECT_EQ(answer.result().id(), "0");
  EXPECT_TRUE(answer.result().error().empty()) << answer.result().error();
  for (auto& o : open) {
    o->stream->WritesDone();
    while (o->stream->Read(&answer)) {
    }
    EXPECT_TRUE(o->stream->Finish().ok());
  }
  int results = 0;
  grpc::Status again;
  for (int attempt = 0; attempt < 50; ++attempt) {  // threads are given back as their calls end
    again = Evaluate("warm", 2, &results);
    if (again.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(again.ok()) << again.error_message();
  EXPECT_EQ(results, 2);
}

// While a cold ResNet-50 load is held inside the registry, new streams on the
// loaded model run to the end (with a lock around loads they would wait for
// it); ListModels shows each model's state on this replica meanwhile.
TEST_F(ServingTest, AColdLoadDoesNotHoldUpStreamsOfALoadedModel) {
  int n = 0;
  ASSERT_TRUE(Evaluate("warm", 2, &n).ok());  // loaded
  ASSERT_EQ(n, 2);
  EXPECT_EQ(Models()["warm"].state(), v1::MODEL_LOADED);
  EXPECT_EQ(Models()["cold"].state(), v1::MODEL_STATE_UNSPECIFIED);

  std::atomic<bool> cold_done{false};
  int cold_results = 0;
  grpc::Status cold_status;
  std::thread cold([&] {
    cold_status = Evaluate("cold", 1, &cold_results);
    cold_done = true;
  });
  ASSERT_TRUE(gate_.WaitEntered()) << "the cold model's load never started";
  EXPECT_EQ(Models()["cold"].state(), v1::MODEL_LOADING);
  for (int round = 0; round < 3; ++round) {
    int warm = 0;
    ASSERT_TRUE(Evaluate("warm", 4, &warm).ok());
    EXPECT_EQ(warm, 4);
  }
  // Ordering, not timing: every warm stream finished while the cold load was
  // still held.
  EXPECT_FALSE(cold_done.load());
  EXPECT_EQ(Models()["cold"].state(), v1::MODEL_LOADING);
  gate_.Open();
  cold.join();
  EXPECT_TRUE(cold_status.ok()) << cold_status.error_message();
  EXPECT_EQ(cold_results, 1);
  EXPECT_EQ(Models()["cold"].state(), v1::MODEL_LOADED);
  EXPECT_EQ(Models()["cold"].input_size(), 224);
}

// Two streams asking for the same cold model share one load.
TEST_F(ServingTest, StreamsOfAModelBeingLoadedWaitForThatLoad) {
  int a = 0, b = 0;
  grpc::Status sa, sb;
  std::thread first([&] { sa = Evaluate("cold", 1, &a); });
  ASSERT_TRUE(gate_.WaitEntered());
  std::thread second([&] { sb = Evaluate("cold", 1, &b); });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  gate_.Open();
  first.join();
  second.join();
  EXPECT_TRUE(sa.ok()) << sa.error_message();
  EXPECT_TRUE(sb.ok()) << sb.error_message();
  EXPECT_EQ(a + b, 2);
}

TEST_F(ServingTest, AFailedLoadIsTheStreamsErrorAndListedWithItsReason) {
  int n = 0;
  grpc::Status st = Evaluate("broken", 1, &n);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  const v1::ModelInfo broken = Models()["broken"];
  EXPECT_EQ(broken.state(), v1::MODEL_FAILED);
  EXPECT_FALSE(broken.load_error().empty());
  EXPECT_EQ(broken.load_error().find(dir_.path()), std::string::npos) << "a server path leaked: " << broken.load_error();
  // The replica keeps serving the others.
  ASSERT_TRUE(Evaluate("warm", 1, &n).ok());
  EXPECT_EQ(n, 1);
}

// Uploads are parsed by `dfc-server --convert-weights` in a confined child;
// the server stores and loads only what it wrote, a served-weights file.
TEST_F(ServingTest, AnUploadIsConvertedInAConfinedProcessAndStoredAsAWeightsFile) {
  v1::ModelInfo info;
  grpc::Status st = Import("imported", "mesoinception4", dir_.Join("warm.ckpt"), &info);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(info.format(), "checkpoint");
  EXPECT_EQ(info.input_size(), 256);
  const std::vector<std::string> stored = ModelsDirEntries();
  ASSERT_EQ(stored.size(), 1u) << "the upload and the converter's directory are removed";
  ASSERT_TRUE(IsWeightsFile(dir_.Join("models/" + stored[0])));
  auto model = MakeDetector("mesoinception4");
  ASSERT_TRUE(model.ok());
  CheckpointMeta meta;
  ASSERT_TRUE(LoadWeightsFile(dir_.Join("models/" + stored[0]), **model, &meta).ok());
  EXPECT_EQ(meta.arch, "mesoinception4");
  int n = 0;
  ASSERT_TRUE(Evaluate("imported", 3, &n).ok());
  EXPECT_EQ(n, 3);
  // The converter reports its confinement (seccomp always; Landlock where the kernel has it).
  std::filesystem::create_directory(dir_.Join("convert"));
  std::string sandbox;
  ASSERT_TRUE(ConvertWeights(Options().converter, "mesoinception4", dir_.Join("warm.ckpt"),
                             dir_.Join("convert/w.dfcw"), "the uploaded file", &sandbox).ok());
  EXPECT_EQ(sandbox.rfind("seccomp, ", 0), 0u) << sandbox;
  // Weights of another architecture are the converter's refusal, named.
  st = Import("wrong", "meso4", dir_.Join("warm.ckpt"), &info);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("the checkpoint is a mesoinception4, not a meso4"), std::string::npos)
      << st.error_message();
  // So is a file that is no checkpoint, named for what it is (here one cut
  // short, as an upload of a copy still being written would be).
  const std::string whole = testing::ReadFileOrDie(dir_.Join("warm.ckpt"));
  testing::WriteFileOrDie(dir_.Join("cut.ckpt"), whole.substr(0, whole.size() / 2));
  st = Import("cut", "mesoinception4", dir_.Join("cut.ckpt"), &info);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("'the uploaded file' is not a DFC checkpoint: it is a zip archive cut short"),
            std::string::npos)
      << st.error_message();
  // A name in use is refused, saying how to overwrite it.
  st = Import("imported", "mesoinception4", dir_.Join("warm.ckpt"), &info);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_NE(st.error_message().find("model 'imported' exists (dfc import --replace overwrites it)"),
            std::string::npos)
      << st.error_message();
  EXPECT_EQ(ModelsDirEntries().size(), 1u);
}

// A file that crashes the parser, hangs it, makes it allocate without bound
// or takes it over costs that one import: a named error, nothing registered or left
// behind, and the replica goes on serving.
TEST_F(ServingTest, AConverterThatCrashesHangsOrRunsOutOfMemoryCostsOnlyThatImport) {
  struct Case {
    std::string name;
    std::vector<std::string> command;  // empty: the real converter
    std::string arch, weights, error;
    grpc::StatusCode code = grpc::StatusCode::INVALID_ARGUMENT;
  };
  const std::vector<Case> cases = {
      {"crashes", {"/bin/sh", "-c", "kill -SEGV $$", "sh"}, "mesoinception4", "warm.ckpt",
       "reading the uploaded file ended the converter with SIGSEGV"},
      {"hangs", {"/bin/sh", "-c", "kill -STOP $$", "sh"}, "mesoinception4", "warm.ckpt",
       "converting the uploaded file took longer than 2 s"},
      // ResNet-50's 95 MB of weights in a 48 MiB budget.
      {"too-big", {}, "resnet50-vggface", "cold.ckpt",
       "needs more memory than the converter may use (the converter's limits: 48 MiB of memory"},
      // A converter taken over by its input could write anything: the server
      // reads only a served-weights file, never a checkpoint archive or HDF5.
      {"not-weights", {"/bin/sh", "-c", "cp \"$2\" \"$3\"", "sh"}, "mesoinception4", "warm.ckpt",
       "the converted weights do not load: 'the converted weights': weights file: not a DFC weights file",
       grpc::StatusCode::INTERNAL},
  };
  for (const Case& c : cases) {
    ModelRegistryOptions o = Options();
    if (!c.command.empty()) o.converter.command = c.command;
    o.converter.timeout = std::chrono::seconds(c.name == "hangs" ? 2 : 120);
    o.converter.memory_bytes = int64_t{48} << 20;
    Start(o);
    v1::ModelInfo info;
    const auto start = std::chrono::steady_clock::now();
    grpc::Status st = Import(c.name, c.arch, dir_.Join(c.weights), &info);
    EXPECT_EQ(st.error_code(), c.code) << c.name << ": " << st.error_message();
    EXPECT_NE(st.error_message().find(c.error), std::string::npos) << c.name << ": " << st.error_message();
    EXPECT_EQ(st.error_message().find(dir_.path()), std::string::npos)
        << "a server path leaked: " << st.error_message();
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(60)) << c.name;
    EXPECT_EQ(Models().count(c.name), 0u) << c.name;
    EXPECT_TRUE(ModelsDirEntries().empty()) << c.name << ": " << ModelsDirEntries().front();
    // (A served-weights file: loading it runs no converter.)
    int n = 0;
    EXPECT_TRUE(Evaluate("served", 2, &n).ok()) << c.name;
    EXPECT_EQ(n, 2) << c.name;
  }
}

// The run directory is the ranks': a checkpoint there that is a link to
// itself or a FIFO fails only its own request (fs::exists threw on the loop,
// ending the server), and the server serves on.
TEST_F(ServingTest, ACheckpointThatIsALinkLoopOrAFifoFailsOnlyItsRequest) {
  const std::string run = dir_.Join("job-8");
  std::filesystem::create_directories(run);
  std::filesystem::create_symlink("best.ckpt", run + "/best.ckpt");
  ASSERT_EQ(::mkfifo((run + "/latest.ckpt").c_str(), 0644), 0);
  catalog_->AddJob("job-8", "mesoinception4", run);
  int n = 0;
  grpc::Status st = Evaluate(JobCheckpoint("job-8", "best"), 1, &n);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND) << st.error_message();
  EXPECT_NE(st.error_message().find("job job-8 has no best checkpoint yet"), std::string::npos) << st.error_message();
  st = Evaluate(JobCheckpoint("job-8", "latest"), 1, &n);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("is a FIFO, not a regular file"), std::string::npos) << st.error_message();
  ASSERT_TRUE(Evaluate("served", 1, &n).ok());
  EXPECT_EQ(n, 1);
}

// The server parses only served-weights files itself. A job's checkpoint (the
// workers write it) and a model stored before imports were converted go
// through the same confined converter when they are loaded; what it writes is
// loaded and then removed.
TEST_F(ServingTest, WeightsTheServerDidNotWriteAreConvertedWhenLoaded) {
  const std::string run = dir_.Join("job-7");
  std::filesystem::create_directories(run);
  SaveRandomCheckpoint("mesoinception4", run + "/best.ckpt", 3);
  catalog_->AddJob("job-7", "mesoinception4", run);
  const v1::ModelRef best = JobCheckpoint("job-7", "best");
  int n = 0;
  // The real converter: both load, and the job's epoch comes from the
  // checkpoint's sidecar and the converted file.
  grpc::Status st = Evaluate(best, 2, &n);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(n, 2);
  ASSERT_TRUE(Evaluate("warm", 1, &n).ok());
  auto models = Models();
  EXPECT_EQ(models["job-7:best"].state(), v1::MODEL_LOADED);
  EXPECT_EQ(models["job-7:best"].epoch(), 3);
  EXPECT_EQ(models["warm"].state(), v1::MODEL_LOADED);
  EXPECT_TRUE(ModelsDirEntries().empty()) << ModelsDirEntries().front();
  // A converter that crashes: the loads fail with its crash named (so the
  // server did not parse these files itself), and a served-weights file
  // still loads without it.
  ModelRegistryOptions o = Options();
  o.converter.command = {"/bin/sh", "-c", "kill -SEGV $$", "sh"};
  Start(o);
  st = Evaluate(best, 1, &n);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("reading the job's checkpoint ended the converter with SIGSEGV"),
            std::string::npos) << st.error_message();
  st = Evaluate("warm", 1, &n);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("reading the stored model ended the converter with SIGSEGV"), std::string::npos)
      << st.error_message();
  EXPECT_EQ(st.error_message().find(dir_.path()), std::string::npos) << "a server path leaked: " << st.error_message();
  ASSERT_TRUE(Evaluate("served", 1, &n).ok());
  EXPECT_EQ(n, 1);
  EXPECT_TRUE(ModelsDirEntries().empty()) << ModelsDirEntries().front();
}

// The server digests what it receives: a digest the client announced must
// match (else nothing is imported), and the model records it either way.
TEST_F(ServingTest, TheUploadsDigestIsCheckedAndRecorded) {
  auto sum = testing::RunCommand("sha256sum " + dir_.Join("warm.ckpt"));
  ASSERT_EQ(sum.exit_code, 0) << sum.err;
  const std::string expected = sum.out.substr(0, 64);
  std::string wrong = expected;
  wrong[0] = wrong[0] == '0' ? '1' : '0';
  v1::ModelInfo info;
  grpc::Status st = Import("damaged", "mesoinception4", dir_.Join("warm.ckpt"), &info, wrong);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DATA_LOSS) << st.error_message();
  EXPECT_NE(st.error_message().find("the upload's SHA-256 is " + expected + ", the header announced " + wrong),
            std::string::npos) << st.error_message();
  EXPECT_EQ(Models().count("damaged"), 0u);
  EXPECT_TRUE(ModelsDirEntries().empty());
  st = Import("badly-written", "mesoinception4", dir_.Join("warm.ckpt"), &info, "ABC");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("sha256 'ABC': expected 64 lowercase hex digits"), std::string::npos)
      << st.error_message();
  st = Import("checked", "mesoinception4", dir_.Join("warm.ckpt"), &info, expected);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(info.sha256(), expected);
  st = Import("unchecked", "mesoinception4", dir_.Join("warm.ckpt"), &info);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(info.sha256(), expected);
  EXPECT_EQ(Models()["checked"].sha256(), expected);
}

// Each converter may use gigabytes: at most max_converting run at once, the
// other imports wait for a slot (and then run).
TEST_F(ServingTest, ConvertersBeyondTheLimitWaitForASlot) {
  const std::string log = dir_.Join("converters.log");
  ModelRegistryOptions o = Options();
  o.max_converting = 1;
  // A converter that logs its start and end and refuses the weights.
  o.converter.command = {"/bin/sh", "-c",
                         "echo + >>" + log + "; sleep 0.3; echo - >>" + log + "; echo 'error: refused' >&2; exit 2",
                         "sh"};
  Start(o);
  std::vector<std::thread> imports;
  std::atomic<int> refused{0};
  for (int i = 0; i < 3; ++i) {
    imports.emplace_back([&, i] {
      v1::ModelInfo info;
      grpc::Status st = Import("m" + std::to_string(i), "mesoinception4", dir_.Join("warm.ckpt"), &info);
      refused += st.error_code() == grpc::StatusCode::INVALID_ARGUMENT && st.error_message() == "refused";
    });
  }
  for (auto& t : imports) t.join();
  EXPECT_EQ(refused, 3);
  EXPECT_EQ(testing::ReadFileOrDie(log), "+\n-\n+\n-\n+\n-\n") << "converters overlapped";
}

// What the server stores for an import holds the model exactly, and loads
// only into the architecture, names, dtypes and shapes it was written from.
TEST(WeightsFileModelTest, AWeightsFileHoldsExactlyTheModel) {
  testing::TempDir dir;
  auto model = MakeDetector("mesoinception4");
  ASSERT_TRUE(model.ok());
  {
    torch::NoGradGuard no_grad;
    for (auto& b : (*model)->named_buffers()) {
      if (b.value().is_floating_point()) b.value().uniform_(0.5, 1.5);  // BatchNorm statistics too
    }
  }
  ASSERT_TRUE(SaveWeightsFile(dir.Join("w.dfcw"), **model, 4).ok());
  auto loaded = LoadDetector("mesoinception4", dir.Join("w.dfcw"), {}, "cpu");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  auto a = (*model)->named_parameters(), b = (*loaded)->named_parameters();
  for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key();
  auto ab = (*model)->named_buffers(), bb = (*loaded)->named_buffers();
  for (const auto& p : ab) EXPECT_TRUE(torch::equal(p.value(), bb[p.key()])) << p.key();
  auto other = LoadDetector("meso4", dir.Join("w.dfcw"), {}, "cpu");
  ASSERT_FALSE(other.ok());
  EXPECT_NE(other.status().message().find("holds a mesoinception4 model, not meso4"), std::string::npos)
      << other.status();
  // A damaged byte is refused by the checksum, naming the file.
  std::string bytes = testing::ReadFileOrDie(dir.Join("w.dfcw"));
  bytes[bytes.size() / 2] ^= 0x01;
  testing::WriteFileOrDie(dir.Join("damaged.dfcw"), bytes);
  auto damaged = LoadDetector("mesoinception4", dir.Join("damaged.dfcw"), {}, "cpu");
  ASSERT_FALSE(damaged.ok());
  EXPECT_EQ(damaged.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(damaged.status().message().find("checksum mismatch"), std::string::npos) << damaged.status();
}

}  // namespace
}  // namespace dfc
