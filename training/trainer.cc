#include "training/trainer.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "common/atomic_file.h"
#include "common/training_config.h"
#include "common/metrics.h"
#include "common/run_dir.h"
#include "common/status_macros.h"
#include "data_shards/batch_loader.h"
#include "data_shards/dataset_scan.h"
#include "data_shards/shard_planner.h"
#include "data_shards/shuffle.h"
#include "training/gradient_sync.h"
#include "models/checkpoint.h"
#include "models/keras_h5.h"
#include "training/precision.h"
#include "models/tensor_batch.h"

namespace dfc {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

bool IsResNet(const std::string& arch) { return arch == "resnet50-vggface"; }

absl::Status ValidateOptions(const TrainOptions& o) {
  // The fields a job's config shares with `dfc train` go through the one
  // validator (common/training_config) that SubmitJob and every rank use.
  v1::TrainingConfig c;
  c.set_model(o.arch);
  c.set_data(o.data_dir);
  c.set_epochs(o.epochs);
  c.set_batch_size(o.batch_size);
  c.set_lr(o.lr);
  c.set_adam_eps(o.adam_eps);
  c.set_loss(o.loss);
  c.set_lr_schedule(o.lr_schedule);
  c.set_early_stopping_patience(o.early_stopping_patience);
  c.set_init(o.init_weights);
  c.set_seed(o.seed);
  c.set_bn_momentum(o.detector.bn_momentum == 0.99 ? 0 : o.detector.bn_momentum);
  c.set_max_train_images(o.max_train_images);
  c.set_max_val_images(o.max_val_images);
  c.set_threads_per_rank(o.threads);
  c.set_recipe(o.recipe);
  c.set_precision(o.precision);
  c.set_precise_bn_batches(o.precise_bn_batches);
  if (absl::Status st = ValidateTrainingConfig(c); !st.ok()) return st;
  auto bad = [](const std::string& flag, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", why));
  };
  if (o.out_dir.empty()) return bad("--out", "an output directory is required");
  if (o.loader_threads < 0 || o.loader_threads > 1024) {
    return bad("--loader-threads", absl::StrCat("must be in [0, 1024], got ", o.loader_threads));
  }
  if (o.resume && !o.recipe.empty()) return bad("--resume", "cannot be combined with --recipe");
  if (o.precision == "fp16" && !DefaultDevice().is_cuda()) {
    return bad("--precision", "fp16 needs a CUDA device (autocast on CPU supports bf16 only)");
  }
  return absl::OkStatus();
}

// A deterministic subset of at most `max` records that keeps their order
// (and so the Keras per-class order).
std::vector<RecordRef> Subset(const std::vector<RecordRef>& all, int64_t max, uint64_t seed) {
  if (max <= 0 || static_cast<int64_t>(all.size()) <= max) return all;
  std::vector<uint32_t> perm = EpochPermutation(static_cast<uint32_t>(all.size()), seed, 0xFFFF);
  perm.resize(static_cast<size_t>(max));
  std::sort(perm.begin(), perm.end());
  std::vector<RecordRef> out;
  for (uint32_t i : perm) out.push_back(all[i]);
  return out;
}

// The summed loss of a batch (callers scale it to a mean).
torch::Tensor LossSum(const std::string& kind, const torch::Tensor& logits, const torch::Tensor& targets) {
  if (kind == "mse") return torch::mse_loss(torch::sigmoid(logits), targets, torch::Reduction::Sum);
  return torch::binary_cross_entropy_with_logits(logits, targets, {}, {}, torch::Reduction::Sum);
}

struct EvalResult {
  double loss = 0, accuracy = 0, auc = 0;
};

// Throws on a collective failure inside autograd; caught around each step.
void AllReduceOrThrow(Collective* c, torch::Tensor& t) {
  absl::Status st = c->AllReduceSum(t);
  if (!st.ok()) throw std::runtime_error(std::string(st.message()));
}

// Evaluates the loader's `records` (in order); with a collective each rank
// scores its share and the scores are summed into place so every rank sees
// them all.
absl::StatusOr<EvalResult> Evaluate(DetectorImpl& model, BatchLoader& loader, const std::vector<RecordRef>& records,
                                    const std::string& loss_kind, const torch::Device& device, Collective* collective,
                                    int64_t batch_size, const std::function<void()>& progress) {
  const size_t num_records = records.size();
  model.eval();
  torch::NoGradGuard no_grad;
  const int world = collective ? collective->world_size() : 1;
  const int rank = collective ? collective->rank() : 0;
  RankEpochPlan plan = PlanRankEpoch(static_cast<uint32_t>(num_records), static_cast<int>(batch_size) * world, world,
                                     rank, 0, 0, /*shuffle=*/false);
  loader.StartEpochWithBatches(plan.steps);
  // Scores by record position, then the summed loss: one all-reduce for both.
  std::vector<double> scores(num_records + 1, 0.0);
  for (;;) {
    DFC_ASSIGN_OR_RETURN(std::optional<Batch> batch, loader.Next());
    if (!batch) break;
    if (batch->count == 0) continue;
    torch::Tensor x = PixelsToTensor(batch->pixels.data(), batch->count, batch->image_size, device);
    torch::Tensor y = torch::tensor(batch->labels, torch::kFloat32).to(device);
    torch::Tensor logits = model.forward(x);
    scores[num_records] += LossSum(loss_kind, logits, y).item<double>();
    torch::Tensor p = torch::sigmoid(logits).to(torch::kCPU).to(torch::kFloat64).contiguous();
    const double* pp = p.data_ptr<double>();
    for (int i = 0; i < batch->count; ++i) scores[batch->positions[i]] = pp[i];
    if (progress) progress();
  }
  if (collective && world > 1) {
    DFC_RETURN_IF_ERROR(collective->AllReduceSum(
        torch::from_blob(scores.data(), {static_cast<int64_t>(scores.size())}, torch::kFloat64)));
  }
  EvalResult r;
  if (num_records == 0) return r;
  const std::vector<float> s(scores.begin(), scores.begin() + static_cast<std::ptrdiff_t>(num_records));
  std::vector<int32_t> l(num_records);
  for (size_t i = 0; i < num_records; ++i) l[i] = records[i].label;
  r.loss = scores[num_records] / static_cast<double>(num_records);
  r.accuracy = CountConfusion(s, l, 0.5f).accuracy();
  r.auc = BinaryAuc(s, l);
  return r;
}

// Precise BatchNorm (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021):
// the moving statistics become the average of `batches` training batches'
// statistics under the current weights. Data-parallel ranks each take their
// share of the same global batches; the synchronised BatchNorm makes the
// statistics global and identical on every rank.
absl::Status RecomputeBatchNormStats(DetectorImpl& model, BatchLoader& loader, const std::vector<RecordRef>& records,
                                     int batches, int64_t global_batch, int world, int rank, uint64_t seed, int epoch,
                                     const torch::Device& device, const std::function<void()>& progress) {
  RankEpochPlan plan = PlanRankEpoch(static_cast<uint32_t>(records.size()), static_cast<int>(global_batch), world, rank,
                                     seed ^ 0x5eed, static_cast<uint64_t>(epoch));
  if (static_cast<int>(plan.steps.size()) > batches) {
    plan.steps.resize(static_cast<size_t>(batches));
    plan.offset.resize(static_cast<size_t>(batches));
    plan.global_batch.resize(static_cast<size_t>(batches));
  }
  loader.StartEpochWithBatches(plan.steps);
  model.train();
  torch::NoGradGuard no_grad;
  absl::Cleanup own_momentum = [&model] { model.SetBatchNormMomentumOverride(-1); };  // on every return
  for (size_t k = 0; k < plan.steps.size(); ++k) {
    DFC_ASSIGN_OR_RETURN(std::optional<Batch> batch, loader.Next());
    if (!batch) return absl::InternalError("the loader ended before the precise-BatchNorm plan");
    model.SetBatchNormMomentumOverride(1.0 / static_cast<double>(k + 1));
    model.SetBatchShard(plan.offset[k], plan.global_batch[k]);
    try {
      model.forward(PixelsToTensor(batch->pixels.data(), batch->count, batch->image_size, device));
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("precise BatchNorm batch ", k + 1, " failed: ", e.what()));
    }
    if (progress) progress();
  }
  return absl::OkStatus();
}

// One training run over fixed train/validation records.
struct Phase {
  std::vector<RecordRef> train, val;
  int epochs = 0;
  int patience = 0;
  std::string out_dir;
  bool resume = false;
};

absl::StatusOr<TrainResult> TrainPhase(const TrainOptions& o, const ShardSet& shards, const Phase& phase,
                                       TrainObserver* obs) {
  const auto t_start = Clock::now();
  const torch::Device device = DefaultDevice();
  torch::manual_seed(o.seed);
  DFC_ASSIGN_OR_RETURN(Detector model, MakeDetector(o.arch, o.detector));
  const double base_lr = o.lr;  // resolved by RunTraining
  const double eps = o.adam_eps;
  if (!o.init_weights.empty()) {
    if (LooksLikeHdf5(o.init_weights)) {
      DFC_RETURN_IF_ERROR(ImportKerasWeights(*model, o.init_weights));
    } else {
      DFC_RETURN_IF_ERROR(LoadCheckpoint(o.init_weights, *model, nullptr, false).status());
    }
  }
  model->to(device);
  Collective* const collective = o.collective;
  const int world = collective ? collective->world_size() : 1;
  const int rank = collective ? collective->rank() : 0;
  const bool writer = rank == 0;  // rank 0 alone writes checkpoints and metrics
  std::unique_ptr<GradientSynchronizer> sync;
  if (world > 1) {
    std::vector<torch::Tensor> state;
    for (auto& p : model->parameters()) state.push_back(p.data());
    for (auto& b : model->buffers()) state.push_back(b);
    DFC_RETURN_IF_ERROR(collective->Broadcast(state, 0));
    model->SetBatchNormAllReduce([collective](torch::Tensor& t) { AllReduceOrThrow(collective, t); });
    sync = std::make_unique<GradientSynchronizer>(collective, model->parameters(), o.bucket_bytes, o.overlap_allreduce);
  }
  std::vector<torch::Tensor> trainable;
  for (auto& p : model->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  torch::optim::Adam optimizer(trainable, torch::optim::AdamOptions(base_lr).eps(eps));
  const std::optional<at::ScalarType> amp = AutocastType(o.precision);
  // fp16 only: dynamic loss scaling (as torch.cuda.amp.GradScaler: x2 after
  // 2000 finite steps, /2 and the step skipped on inf/NaN gradients). The
  // gradients are all-reduced first, so every rank takes the same decision.
  double loss_scale = o.precision == "fp16" ? 65536.0 : 1.0;
  int64_t finite_steps = 0;

  std::error_code ec;
  fs::create_directories(phase.out_dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("--out: cannot create '", phase.out_dir, "': ", ec.message()));
  const std::string latest = run_dir::Checkpoint(phase.out_dir, run_dir::kLatest);
  const std::string best = run_dir::Checkpoint(phase.out_dir, run_dir::kBest);
  const std::string metrics_path = run_dir::Metrics(phase.out_dir);

  TrainResult result;
  int start_epoch = 0;
  int64_t step = 0;
  nlohmann::json history = nlohmann::json::array();
  if (phase.resume) {
    auto meta = LoadCheckpoint(latest, *model, &optimizer, /*restore_rng=*/true);
    if (!meta.ok()) return absl::Status(meta.status().code(), absl::StrCat("--resume: ", meta.status().message()));
    start_epoch = static_cast<int>(meta->epoch);
    step = meta->step;
    history = nlohmann::json::parse(meta->metrics_json, nullptr, false);
    if (history.is_discarded()) history = nlohmann::json::array();
    for (const auto& h : history) {
      EpochMetrics m;
      m.epoch = h.value("epoch", 0);
      m.val_accuracy = h.value("val_accuracy", 0.0);
      m.val_auc = h.value("val_auc", 0.0);
      m.val_loss = h.value("val_loss", 0.0);
      m.images_per_second = h.value("images_per_second", 0.0);
      result.history.push_back(m);
    }
  } else if (writer && fs::exists(metrics_path, ec)) {
    fs::remove(metrics_path, ec);
  }

  const int num_threads = o.loader_threads > 0 ? o.loader_threads
                                                : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / 2);
  BatchLoaderOptions lo;
  lo.batch_size = std::max(1, o.batch_size / world);
  lo.image_size = model->input_size();
  lo.seed = o.seed;
  lo.threads = num_threads;
  BatchLoader train_loader(&shards, phase.train, lo);
  BatchLoader bn_loader(&shards, phase.train, lo);
  lo.shuffle = false;
  BatchLoader val_loader(&shards, phase.val, lo);
  result.train_images = static_cast<int64_t>(phase.train.size());
  result.val_images = static_cast<int64_t>(phase.val.size());

  double best_acc = -1;
  int best_epoch = 0;
  for (const EpochMetrics& m : result.history) {
    if (m.val_accuracy > best_acc) {
      best_acc = m.val_accuracy;
      best_epoch = m.epoch;
    }
  }
  for (int epoch = start_epoch; epoch < phase.epochs; ++epoch) {
    if (phase.patience > 0 && best_epoch > 0 && epoch - best_epoch >= phase.patience) break;
    const double lr = ScheduledLr(o.lr_schedule, base_lr, epoch);
    for (auto& group : optimizer.param_groups()) {
      static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
    }
    model->train();
    const RankEpochPlan plan = PlanRankEpoch(static_cast<uint32_t>(phase.train.size()), o.batch_size, world, rank,
                                             o.seed, static_cast<uint64_t>(epoch));
    train_loader.StartEpochWithBatches(plan.steps);
    const int64_t steps = static_cast<int64_t>(plan.steps.size());
    if (obs) obs->OnEpochStart(epoch + 1, phase.epochs, steps);
    const auto t0 = Clock::now();
    double loss_sum = 0, correct = 0, seen = 0, data_s = 0, compute_s = 0, wait_s = 0;
    for (int64_t s = 0; s < steps; ++s) {
      const auto t_data = Clock::now();
      DFC_ASSIGN_OR_RETURN(std::optional<Batch> batch, train_loader.Next());
      if (!batch) return absl::InternalError("the loader ended before the epoch's plan");
      const auto t_compute = Clock::now();
      data_s += Seconds(t_data, t_compute);
      torch::Tensor x = PixelsToTensor(batch->pixels.data(), batch->count, batch->image_size, device);
      torch::Tensor y = torch::tensor(batch->labels, torch::kFloat32).to(device);
      model->SetBatchShard(plan.offset[s], plan.global_batch[s]);
      optimizer.zero_grad();
      try {
        torch::Tensor logits;
        {
          AutocastGuard autocast(device.type(), amp);
          logits = model->forward(x);
        }
        logits = logits.to(torch::kFloat32);  // the loss in float32
        // Each rank's share of the global batch's mean loss; the gradient
        // all-reduce averages over ranks, hence the factor world / global.
        const double scale = static_cast<double>(world) / static_cast<double>(plan.global_batch[s]);
        torch::Tensor loss_sum_t = LossSum(o.loss, logits, y);
        if (sync) sync->BeginStep();
        (loss_sum_t * (scale * loss_scale)).backward();
        if (sync) DFC_RETURN_IF_ERROR(sync->Finish());
        if (loss_scale != 1.0) {
          std::vector<torch::Tensor> checks;
          for (auto& p : trainable) {
            if (!p.grad().defined()) continue;
            p.grad().div_(loss_scale);
            checks.push_back(torch::isfinite(p.grad()).all());
          }
          const bool finite = checks.empty() || torch::stack(checks).all().item<bool>();  // one sync
          if (finite) {
            optimizer.step();
            if (++finite_steps % 2000 == 0) loss_scale *= 2;
          } else {
            loss_scale = std::max(1.0, loss_scale / 2);
            finite_steps = 0;
          }
        } else {
          optimizer.step();
        }
        loss_sum += loss_sum_t.item<double>();
        correct += ((logits > 0).to(torch::kFloat32) == y).sum().item<double>();
      } catch (const std::exception& e) {
        return absl::UnavailableError(absl::StrCat("training step ", step + 1, " failed: ", e.what()));
      }
      seen += batch->count;
      ++step;
      if (o.progress) o.progress();
      compute_s += Seconds(t_compute, Clock::now());
      if (sync) wait_s += sync->last_wait_seconds();
      if (obs && seen > 0) obs->OnStep(epoch + 1, s + 1, steps, loss_sum / seen, correct / seen);
    }
    const double train_seconds = Seconds(t0, Clock::now());
    if (o.precise_bn_batches > 0) {
      DFC_RETURN_IF_ERROR(RecomputeBatchNormStats(*model, bn_loader, phase.train, o.precise_bn_batches, o.batch_size,
                                                  world, rank,
                                                  o.seed, epoch, device, o.progress));
    }
    if (world > 1) {
      torch::Tensor totals = torch::tensor({loss_sum, correct, seen}, torch::kFloat64);
      DFC_RETURN_IF_ERROR(collective->AllReduceSum(totals));
      loss_sum = totals[0].item<double>();
      correct = totals[1].item<double>();
      seen = totals[2].item<double>();
    }
    DFC_ASSIGN_OR_RETURN(EvalResult ev, Evaluate(*model, val_loader, phase.val, o.loss, device, collective,
                                                 std::max(1, o.batch_size / world), o.progress));
    EpochMetrics m;
    m.epoch = epoch + 1;
    m.lr = lr;
    m.loss = seen ? loss_sum / seen : 0;
    m.accuracy = seen ? correct / seen : 0;
    m.val_loss = ev.loss;
    m.val_accuracy = ev.accuracy;
    m.val_auc = ev.auc;
    m.images_per_second = train_seconds > 0 ? seen / train_seconds : 0;
    m.data_wait_share = train_seconds > 0 ? data_s / train_seconds : 0;
    m.step_data_seconds = steps ? data_s / steps : 0;
    m.step_compute_seconds = steps ? (compute_s - wait_s) / steps : 0;
    m.step_allreduce_wait_seconds = steps ? wait_s / steps : 0;
    m.world_size = world;
    m.seconds = Seconds(t0, Clock::now());
    m.step = step;
    result.history.push_back(m);
    history.push_back(nlohmann::json::parse(m.ToJson()));
    if (writer) {
      nlohmann::ordered_json line = nlohmann::ordered_json::parse(m.ToJson());
      line["config"] = nlohmann::ordered_json::parse(o.ToJson());
      DFC_RETURN_IF_ERROR(AppendLine(metrics_path, line.dump()));
    }

    CheckpointMeta meta;
    meta.arch = o.arch;
    meta.epoch = epoch + 1;
    meta.step = step;
    meta.lr = lr;
    meta.metrics_json = history.dump();
    meta.options_json = o.ToJson();
    if (writer) DFC_RETURN_IF_ERROR(SaveCheckpoint(latest, *model, &optimizer, meta));
    // Weights only, so that any epoch can be evaluated later (`--checkpoint N`).
    if (writer) {
      DFC_RETURN_IF_ERROR(SaveCheckpoint(run_dir::EpochCheckpoint(phase.out_dir, epoch + 1),
                                         *model, nullptr, meta));
    }
    if (m.val_accuracy > best_acc) {
      best_acc = m.val_accuracy;
      best_epoch = m.epoch;
      if (writer) DFC_RETURN_IF_ERROR(SaveCheckpoint(best, *model, &optimizer, meta));
    }
    // Everyone waits for rank 0's checkpoint, so a restart finds it complete.
    if (world > 1) DFC_RETURN_IF_ERROR(collective->Barrier());
    if (obs) obs->OnEpoch(m);
  }
  if (result.history.empty()) return absl::FailedPreconditionError("no epoch was trained");
  const EpochMetrics& last = result.history.back();
  result.epochs = last.epoch;
  result.best_epoch = best_epoch;
  result.val_accuracy = last.val_accuracy;
  result.val_auc = last.val_auc;
  result.val_loss = last.val_loss;
  double ips = 0;
  int counted = 0;
  for (const EpochMetrics& e : result.history) {
    if (e.images_per_second > 0) {
      ips += e.images_per_second;
      ++counted;
    }
  }
  result.images_per_second = counted ? ips / counted : 0;
  result.seconds = Seconds(t_start, Clock::now());
  result.checkpoint = latest;
  return result;
}

}  // namespace

double ScheduledLr(const std::string& schedule, double base_lr, int epoch) {
  if (schedule != "notebook" || epoch < 2) return base_lr;
  // The notebook's scheduler returns lr * exp(-0.2) from the third epoch on.
  return base_lr * std::exp(-0.2 * (epoch - 1));
}

std::string TrainOptions::ToJson() const {
  nlohmann::ordered_json j = {{"model", arch},
                              {"data", data_dir},
                              {"epochs", epochs},
                              {"batch_size", batch_size},
                              {"lr", lr},
                              {"adam_eps", adam_eps},
                              {"loss", loss},
                              {"lr_schedule", lr_schedule},
                              {"early_stopping_patience", early_stopping_patience},
                              {"init", init_weights},
                              {"seed", seed},
                              {"recipe", recipe},
                              {"precision", precision},
                              {"precise_bn_batches", precise_bn_batches},
                              {"bn_momentum", detector.bn_momentum},
                              {"max_train_images", max_train_images},
                              {"max_val_images", max_val_images}};
  return j.dump();
}

std::string EpochMetrics::ToJson() const {
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
  nlohmann::ordered_json j = {{"epoch", epoch},
                              {"lr", lr},
                              {"loss", num(loss)},
                              {"accuracy", num(accuracy)},
                              {"val_loss", num(val_loss)},
                              {"val_accuracy", num(val_accuracy)},
                              {"val_auc", num(val_auc)},
                              {"images_per_second", num(images_per_second)},
                              {"data_wait_share", num(data_wait_share)},
                              {"seconds", num(seconds)},
                              {"step", step},
                              {"world_size", world_size},
                              {"step_data_seconds", num(step_data_seconds)},
                              {"step_compute_seconds", num(step_compute_seconds)},
                              {"step_allreduce_wait_seconds", num(step_allreduce_wait_seconds)}};
  return j.dump();
}

std::string TrainResult::ToJson() const {
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr); };
  nlohmann::ordered_json j = {{"val_accuracy", num(val_accuracy)},
                              {"val_auc", num(val_auc)},
                              {"val_loss", num(val_loss)},
                              {"epochs", epochs},
                              {"best_epoch", best_epoch},
                              {"images_per_second", num(images_per_second)},
                              {"train_images", train_images},
                              {"val_images", val_images},
                              {"seconds", num(seconds)},
                              {"checkpoint", checkpoint}};
  return j.dump();
}

TrainOptions ResolveOptions(const TrainOptions& in) {
  TrainOptions o = in;
  const bool notebook = o.recipe == "notebook";
  if (o.lr_schedule.empty()) o.lr_schedule = notebook ? "notebook" : "constant";
  if (o.lr <= 0) o.lr = IsResNet(o.arch) ? 1e-5 : 1e-3;
  if (o.adam_eps <= 0) o.adam_eps = IsResNet(o.arch) ? 1e-9 : 1e-7;
  if (notebook && o.early_stopping_patience == 0) o.early_stopping_patience = 5;
  if (o.precise_bn_batches == 0) o.precise_bn_batches = notebook ? 0 : 20;
  if (o.precise_bn_batches < 0) o.precise_bn_batches = 0;  // off
  if (o.precision.empty()) o.precision = DefaultDevice().is_cuda() ? "bf16" : "fp32";
  return o;
}

absl::StatusOr<TrainResult> RunTraining(const TrainOptions& given, TrainObserver* obs) {
  DFC_RETURN_IF_ERROR(ValidateOptions(given));
  // Every hyper-parameter as this run uses it: printed now, kept in every
  // metrics line and checkpoint.
  const TrainOptions o = ResolveOptions(given);
  if (obs) obs->OnPhase("hyper-parameters: " + o.ToJson());
  const int ranks_here = o.collective ? o.collective->world_size() : 1;
  torch::set_num_threads(o.threads > 0 ? o.threads
                                       : std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / ranks_here));
  DFC_ASSIGN_OR_RETURN(std::unique_ptr<ShardSet> shards, ShardSet::Open(o.data_dir));
  if (shards->manifest().classes.size() != 2) {
    return absl::InvalidArgumentError(absl::StrCat("--data: the detectors are binary; '", o.data_dir, "' has ",
                                                   shards->manifest().classes.size(), " classes"));
  }
  const std::vector<RecordRef> train = Subset(shards->Records("train"), o.max_train_images, o.seed);
  const std::vector<RecordRef> val = Subset(shards->Records("validation"), o.max_val_images, o.seed);
  if (train.empty()) return absl::InvalidArgumentError(absl::StrCat("--data: '", o.data_dir, "' has no training records"));
  if (val.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--data: '", o.data_dir,
                                                   "' has no validation records (shard with --validation-split > 0)"));
  }
  if (o.recipe != "notebook") {
    Phase phase{train, val, o.epochs, o.early_stopping_patience, o.out_dir, o.resume};
    if (o.resume && !fs::exists(run_dir::Checkpoint(o.out_dir, run_dir::kLatest))) {
      return absl::NotFoundError(absl::StrCat("--resume: no checkpoint at '", o.out_dir, "/latest.ckpt'"));
    }
    return TrainPhase(o, *shards, phase, obs);
  }
  // The notebook's protocol: choose the epoch count on a 50/50 split of the
  // training split, then retrain from scratch on all of it.
  Phase select;
  std::vector<int32_t> labels;
  for (const RecordRef& r : train) labels.push_back(r.label);
  const std::vector<bool> is_val = KerasValidationMask(labels, 2, 0.5, /*from_end=*/false);
  for (size_t i = 0; i < train.size(); ++i) (is_val[i] ? select.val : select.train).push_back(train[i]);
  select.epochs = o.epochs;
  select.patience = o.early_stopping_patience;
  select.out_dir = (fs::path(o.out_dir) / "selection").string();
  if (obs) obs->OnPhase(absl::StrCat("selecting the epoch count on a 50/50 split of the training split (",
                                     select.train.size(), " / ", select.val.size(), " images, patience ",
                                     select.patience, ")"));
  DFC_ASSIGN_OR_RETURN(TrainResult chosen, TrainPhase(o, *shards, select, obs));
  Phase final_phase{train, val, std::max(1, chosen.best_epoch), 0, o.out_dir, false};
  if (obs) obs->OnPhase(absl::StrCat("retraining on the whole training split (", train.size(), " images) for ",
                                     final_phase.epochs, " epochs, evaluating on the validation split (", val.size(),
                                     " images)"));
  DFC_ASSIGN_OR_RETURN(TrainResult result, TrainPhase(o, *shards, final_phase, obs));
  result.seconds += chosen.seconds;
  return result;
}

}  // namespace dfc
