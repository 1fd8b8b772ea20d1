// The captured training step's parts that run anywhere: CapturableAdam
// against LibTorch's Adam, and GraphedTrainStep's static-buffer step with a
// stand-in backend whose "graph" re-runs the recorded step (a CPU has no
// graphs). The real capture is checked by the CUDA test at the end, which
// runs where a CUDA build finds a GPU (scripts/gpu_check.sh) and is skipped
// elsewhere.
#include "training/graphed_step.h"

#include <gtest/gtest.h>

#include "models/tensor_batch.h"
#include "training/capturable_adam.h"
#include "training/cuda_step.h"

namespace dfc {
namespace {

std::vector<torch::Tensor> Leaves(uint64_t seed) {
  torch::manual_seed(seed);
  return {torch::randn({7, 5}).requires_grad_(), torch::randn({3, 2, 3, 3}).requires_grad_(),
          torch::randn({11}).requires_grad_()};
}

void RandomGrads(const std::vector<torch::Tensor>& ps, int step) {
  torch::manual_seed(1000 + step);
  for (const auto& p : ps) p.mutable_grad() = torch::randn_like(p) * (1 + step % 3);
}

double MaxDiff(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, (a[i] - b[i]).abs().max().item<double>());
  return m;
}

TEST(CapturableAdamTest, StepsAsTorchAdamDoesIncludingALearningRateChange) {
  std::vector<torch::Tensor> ref = Leaves(3), ours = Leaves(3);
  const auto opts = torch::optim::AdamOptions(1e-3).eps(1e-7);
  torch::optim::Adam ref_adam(ref, opts), our_adam(ours, opts);
  CapturableAdam capturable(our_adam);
  for (int step = 0; step < 40; ++step) {
    if (step == 20) {  // an epoch boundary of the notebook schedule
      static_cast<torch::optim::AdamOptions&>(ref_adam.param_groups()[0].options()).lr(1e-3 * std::exp(-0.2));
      capturable.SetLr(1e-3 * std::exp(-0.2));
    }
    RandomGrads(ref, step);
    RandomGrads(ours, step);
    ref_adam.step();
    capturable.Step();
  }
  EXPECT_LT(MaxDiff(ref, ours), 1e-6);
  const double moved = MaxDiff(ref, Leaves(3));
  EXPECT_GT(moved, 1e-3);  // the comparison is not of untouched weights
  EXPECT_EQ(capturable.StepCount(), 40);
}

// The moments are Adam's own tensors: after SyncStepCount, LibTorch's Adam
// (what a checkpoint saves and --resume loads) continues where it stopped.
TEST(CapturableAdamTest, TorchAdamContinuesFromItsState) {
  std::vector<torch::Tensor> ref = Leaves(4), ours = Leaves(4);
  const auto opts = torch::optim::AdamOptions(1e-5).eps(1e-9);
  torch::optim::Adam ref_adam(ref, opts), our_adam(ours, opts);
  {
    CapturableAdam capturable(our_adam);
    for (int step = 0; step < 5; ++step) {
      RandomGrads(ref, step);
      RandomGrads(ours, step);
      ref_adam.step();
      capturable.Step();
    }
    capturable.SyncStepCount();
  }
  for (int step = 5; step < 10; ++step) {
    RandomGrads(ref, step);
    RandomGrads(ours, step);
    ref_adam.step();
    our_adam.step();
  }
  EXPECT_LT(MaxDiff(ref, ours), 1e-9);
  // And the other way: a resumed CapturableAdam starts from Adam's count.
  CapturableAdam resumed(our_adam);
  EXPECT_EQ(resumed.StepCount(), 10);
}

TEST(CapturableAdamTest, RefusesWhatItDoesNotImplement) {
  std::vector<torch::Tensor> ps = Leaves(5);
  torch::optim::Adam decayed(ps, torch::optim::AdamOptions(1e-3).weight_decay(0.1));
  EXPECT_THROW(CapturableAdam{decayed}, std::invalid_argument);
  torch::optim::Adam ams(ps, torch::optim::AdamOptions(1e-3).amsgrad(true));
  EXPECT_THROW(CapturableAdam{ams}, std::invalid_argument);
}

// A backend for a device without graphs: warm-up runs the step, "capture"
// records it without running it and "replay" runs the recording.
class RerunBackend : public StepGraphBackend {
 public:
  struct Counts {
    int warmups = 0, captures = 0, replays = 0;
  };
  explicit RerunBackend(Counts* counts, bool fail_capture = false) : counts_(counts), fail_(fail_capture) {}
  void RunWarmup(const std::function<void()>& step) override {
    ++counts_->warmups;
    step();
  }
  absl::StatusOr<std::unique_ptr<StepGraph>> Capture(const std::function<void()>& step) override {
    ++counts_->captures;
    if (fail_) return absl::InternalError("capture refused");
    class Recording : public StepGraph {
     public:
      Recording(std::function<void()> s, Counts* c) : step_(std::move(s)), counts_(c) {}
      void Replay() override {
        ++counts_->replays;
        step_();
      }

     private:
      std::function<void()> step_;
      Counts* counts_;
    };
    return std::unique_ptr<StepGraph>(new Recording(step, counts_));
  }

 private:
  Counts* counts_;
  bool fail_;
};

struct TinyData {
  std::vector<torch::Tensor> pixels, labels;
};

// Batches of 4 at 256 x 256 and a last one of 3 (the ragged end of an epoch).
TinyData MakeBatches(const std::vector<int>& sizes) {
  torch::manual_seed(77);
  TinyData d;
  for (int n : sizes) {
    d.pixels.push_back(torch::randint(0, 256, {n, 256, 256, 3}, torch::kUInt8));
    d.labels.push_back(torch::randint(0, 2, {n}).to(torch::kFloat32));
  }
  return d;
}

std::vector<torch::Tensor> Weights(DetectorImpl& m) {
  std::vector<torch::Tensor> out;
  for (const auto& p : m.parameters()) out.push_back(p.detach().clone());
  for (const auto& b : m.buffers()) out.push_back(b.detach().clone().to(torch::kFloat64));
  return out;
}

// The eager reference: a plain step loop with the same optimizer (that
// CapturableAdam steps as LibTorch's Adam does is the test above), so that
// the graphed step must reproduce it bit for bit.
std::vector<torch::Tensor> TrainEagerly(const TinyData& d, int64_t global_batch, std::vector<double>* losses) {
  torch::manual_seed(1);
  Detector model = *MakeDetector("mesoinception4");
  model->train();
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(1e-3).eps(1e-7));
  CapturableAdam capturable(adam);
  torch::manual_seed(2);
  for (size_t i = 0; i < d.pixels.size(); ++i) {
    adam.zero_grad();
    torch::Tensor logits = model->forward(PixelsToFloat(d.pixels[i])).to(torch::kFloat32);
    torch::Tensor loss_sum = LossSum("bce", logits, d.labels[i]);
    (loss_sum * (1.0 / static_cast<double>(global_batch))).backward();
    capturable.Step();
    losses->push_back(loss_sum.item<double>());
  }
  return Weights(*model);
}

TEST(GraphedTrainStepTest, ReplayedStepsTrainAsEagerStepsDoAndTheRaggedBatchRunsEagerly) {
  const TinyData d = MakeBatches({4, 4, 4, 4, 4, 4, 3});
  std::vector<double> eager_losses;
  const std::vector<torch::Tensor> eager = TrainEagerly(d, 4, &eager_losses);

  torch::manual_seed(1);
  Detector model = *MakeDetector("mesoinception4");
  model->train();
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(1e-3).eps(1e-7));
  RerunBackend::Counts counts;
  GraphedTrainStep::Options o;
  o.batch_rows = 4;
  o.warmup_steps = 2;
  GraphedTrainStep step(*model, adam, torch::kCPU, o, std::make_unique<RerunBackend>(&counts));
  torch::manual_seed(2);
  std::vector<double> losses;
  for (size_t i = 0; i < d.pixels.size(); ++i) {
    ASSERT_TRUE(step.Run(d.pixels[i], d.labels[i], 4).ok());
    losses.push_back(step.loss_sum().item<double>());
    EXPECT_EQ(step.captured(), i >= 2) << "batch " << i;
  }
  // 2 warm-up steps, the capture (recorded, then replayed for its own
  // batch), 3 more replays, and the batch of 3 eagerly.
  EXPECT_EQ(counts.warmups, 2);
  EXPECT_EQ(counts.captures, 1);
  EXPECT_EQ(counts.replays, 4);
  EXPECT_EQ(step.replays(), 4);
  EXPECT_EQ(step.eager_steps(), 3);
  ASSERT_EQ(losses.size(), eager_losses.size());
  for (size_t i = 0; i < losses.size(); ++i) EXPECT_EQ(losses[i], eager_losses[i]) << "batch " << i;
  const std::vector<torch::Tensor> ours = Weights(*model);
  EXPECT_EQ(MaxDiff(ours, eager), 0);
  // The optimizer's state is LibTorch Adam's after the sync (checkpoints).
  step.SyncOptimizerState();
  for (const auto& kv : adam.state()) {
    EXPECT_EQ(static_cast<torch::optim::AdamParamState&>(*kv.second).step(), 7);
  }
}

TEST(GraphedTrainStepTest, AFailedCaptureIsReportedAndNothingIsTrainedOnIt) {
  const TinyData d = MakeBatches({4, 4});
  torch::manual_seed(1);
  Detector model = *MakeDetector("meso4");
  model->train();
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(1e-3));
  RerunBackend::Counts counts;
  GraphedTrainStep::Options o;
  o.batch_rows = 4;
  o.warmup_steps = 1;
  GraphedTrainStep step(*model, adam, torch::kCPU, o, std::make_unique<RerunBackend>(&counts, /*fail_capture=*/true));
  ASSERT_TRUE(step.Run(d.pixels[0], d.labels[0], 4).ok());  // the warm-up
  const std::vector<torch::Tensor> before = Weights(*model);
  absl::Status st = step.Run(d.pixels[1], d.labels[1], 4);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_NE(st.message().find("capture refused"), std::string::npos) << st;
  EXPECT_EQ(MaxDiff(Weights(*model), before), 0);
  EXPECT_FALSE(step.captured());
}

// The real thing: a captured CUDA graph trains as eager steps on the same
// GPU do (a ResNet of the real layout but small, which has no dropout: a
// graph draws its random numbers differently from eager steps).
TEST(GraphedTrainStepCudaTest, CapturedGraphTrainsAsEagerStepsOnTheGpu) {
  if (!CudaGraphsBuilt() || !torch::cuda::is_available()) {
    GTEST_SKIP() << "needs a CUDA build of DFC and a GPU (scripts/gpu_check.sh runs it)";
  }
  const torch::Device gpu(torch::kCUDA, 0);
  DetectorOptions small;
  small.resnet_width = 16;
  small.resnet_blocks = {1, 1, 1, 1};
  small.freeze_keras_layers = 0;
  torch::manual_seed(5);
  std::vector<torch::Tensor> px, ys;
  for (int i = 0; i < 8; ++i) {
    px.push_back(torch::randint(0, 256, {8, 224, 224, 3}, torch::kUInt8).to(gpu));
    ys.push_back(torch::randint(0, 2, {8}).to(torch::kFloat32).to(gpu));
  }
  auto train = [&](std::unique_ptr<StepGraphBackend> backend, RerunBackend::Counts* counts) {
    torch::manual_seed(1);
    Detector model = *MakeDetector("resnet50-vggface", small);
    model->to(gpu);
    model->train();
    std::vector<torch::Tensor> trainable;
    for (auto& p : model->parameters())
      if (p.requires_grad()) trainable.push_back(p);
    torch::optim::Adam adam(trainable, torch::optim::AdamOptions(1e-4).eps(1e-9));
    GraphedTrainStep::Options o;
    o.batch_rows = 8;
    GraphedTrainStep step(*model, adam, gpu, o, std::move(backend));
    std::vector<double> losses;
    for (size_t i = 0; i < px.size(); ++i) {
      EXPECT_TRUE(step.Run(px[i], ys[i], 8).ok());
      losses.push_back(step.loss_sum().item<double>());
    }
    if (!counts) {
      EXPECT_TRUE(step.captured());
      EXPECT_EQ(step.replays(), 5);  // 8 steps, 3 of them warm-up
    }
    std::vector<torch::Tensor> w = Weights(*model);
    for (auto& t : w) t = t.cpu();
    return std::make_pair(losses, w);
  };
  RerunBackend::Counts counts;
  auto eager = train(std::make_unique<RerunBackend>(&counts), &counts);
  auto graphed = train(NewCudaGraphBackend(gpu), nullptr);
  for (size_t i = 0; i < eager.first.size(); ++i) {
    EXPECT_NEAR(graphed.first[i], eager.first[i], 1e-3 * (1 + std::abs(eager.first[i]))) << "step " << i;
  }
  EXPECT_LT(MaxDiff(graphed.second, eager.second), 1e-3);
}

// The staged uploader: pinned slots used in turn, a copy stream, the compute
// stream waiting on an event. Five batches of two sizes in a row (so each slot
// is refilled while the other's copy may still run) arrive intact.
TEST(GraphedTrainStepCudaTest, StagedUploadsArriveIntact) {
  if (!CudaGraphsBuilt() || !torch::cuda::is_available()) {
    GTEST_SKIP() << "needs a CUDA build of DFC and a GPU (scripts/gpu_check.sh runs it)";
  }
  const torch::Device gpu(torch::kCUDA, 0);
  std::unique_ptr<BatchUploader> up = BatchUploader::Create(gpu);
  std::vector<Batch> batches(5);
  std::vector<std::pair<torch::Tensor, torch::Tensor>> got;
  for (int i = 0; i < 5; ++i) {
    Batch& b = batches[static_cast<size_t>(i)];
    b.count = i == 4 ? 3 : 16;
    b.image_size = 64;
    torch::manual_seed(i);
    torch::Tensor px = torch::randint(0, 256, {b.count * 64 * 64 * 3}, torch::kUInt8);
    b.pixels.assign(px.data_ptr<uint8_t>(), px.data_ptr<uint8_t>() + px.numel());
    for (int k = 0; k < b.count; ++k) b.labels.push_back((k + i) % 2);
    got.push_back(up->Upload(b));
  }
  for (int i = 0; i < 5; ++i) {
    const Batch& b = batches[static_cast<size_t>(i)];
    torch::Tensor want = torch::from_blob(const_cast<uint8_t*>(b.pixels.data()), {b.count, 64, 64, 3}, torch::kUInt8);
    EXPECT_TRUE(torch::equal(got[static_cast<size_t>(i)].first.cpu(), want)) << "batch " << i;
    EXPECT_TRUE(torch::equal(got[static_cast<size_t>(i)].second.cpu(), torch::tensor(b.labels, torch::kFloat32)))
        << "batch " << i;
    EXPECT_TRUE(got[static_cast<size_t>(i)].first.is_cuda());
  }
}

}  // namespace
}  // namespace dfc
