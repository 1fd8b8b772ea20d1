#include "training/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <thread>
#include <tuple>

#include <nlohmann/json.hpp>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/atomic_file.h"
#include "common/cpus.h"
#include "common/training_config.h"
#include "common/metrics.h"
#include "common/run_dir.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "data_shards/batch_loader.h"
#include "data_shards/dataset_scan.h"
#include "data_shards/shard_planner.h"
#include "data_shards/shuffle.h"
#include "training/cuda_step.h"
#include "training/gradient_sync.h"
#include "training/graphed_step.h"
#include "models/checkpoint.h"
#include "models/precision.h"
#include "models/tensor_batch.h"

namespace dfc {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

bool IsResNet(const std::string& arch) { return arch == "resnet50-vggface"; }

// Why this run's steps cannot be captured as a CUDA graph ("" when they can):
// what --cuda-graphs auto reports and "on" refuses.
std::string WhyNoCudaGraph(const TrainOptions& o, const torch::Device& device, int world) {
  if (!device.is_cuda()) return "no CUDA device";
  if (!CudaGraphsBuilt()) return "a CPU LibTorch build";
  if (world > 1) return absl::StrCat("world size ", world, ": the all-reduces between ranks are not captured");
  if (o.precision == "fp16") return "fp16's loss scaling decides on the host";
  return "";
}

absl::Status ValidateOptions(const TrainOptions& o) {
  // The fields a job's config shares with `dfc train` go through the one
  // validator (common/training_config) that SubmitJob and every rank use.
  v1::TrainingConfig c;
  for (absl::Status parsed : {ParseModel(o.arch).status(), ParseLoss(o.loss).status(),
                              ParseLrSchedule(o.lr_schedule).status(), ParsePrecision(o.precision).status(),
                              ParseCudaGraphs(o.cuda_graphs).status()}) {
    if (!parsed.ok()) return parsed;
  }
  c.set_model(*ParseModel(o.arch));
  c.set_data(o.data_dir);
  c.set_epochs(o.epochs);
  c.set_batch_size(o.batch_size);
  c.set_lr(o.lr);
  c.set_adam_eps(o.adam_eps);
  c.set_loss(*ParseLoss(o.loss));
  c.set_lr_schedule(*ParseLrSchedule(o.lr_schedule));
  c.set_early_stopping_patience(o.early_stopping_patience);
  c.set_init(o.init_weights);
  c.set_seed(o.seed);
  c.set_bn_momentum(o.detector.bn_momentum == 0.99 ? 0 : o.detector.bn_momentum);
  c.set_max_train_images(o.max_train_images);
  c.set_max_val_images(o.max_val_images);
  c.set_threads_per_rank(o.threads);
  c.set_recipe(o.recipe);
  c.set_precision(*ParsePrecision(o.precision));
  c.set_cuda_graphs(*ParseCudaGraphs(o.cuda_graphs));
  c.set_precise_bn_batches(o.precise_bn_batches);
  if (absl::Status st = ValidateTrainingConfig(c); !st.ok()) return st;
  auto bad = [](const std::string& flag, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", why));
  };
  if (o.out_dir.empty()) return bad("--out", "an output directory is required");
  if (o.loader_threads < 0 || o.loader_threads > 1024) {
    return bad("--loader-threads", absl::StrCat("must be in [0, 1024], got ", o.loader_threads));
  }
  if (o.precision == "fp16" && !DefaultDevice().is_cuda()) {
    return bad("--precision", "fp16 needs a CUDA device (autocast on CPU supports bf16 only)");
  }
  if (o.cuda_graphs == "on") {
    const std::string why = WhyNoCudaGraph(o, DefaultDevice(), o.collective ? o.collective->world_size() : 1);
    if (!why.empty()) {
      return bad("--cuda-graphs", absl::StrCat("on needs a CUDA build, a CUDA device and a one-rank job not in fp16; "
                                               "here: ", why));
    }
  }
  return absl::OkStatus();
}

// Decode threads when --loader-threads is 0. On CPU the model's compute
// needs the cores too: half of this rank's share. On a GPU the rank's own
// thread only queues kernels: all of its share but that one thread.
int DefaultLoaderThreads(const torch::Device& device, int cpus) {
  return std::max(1, device.is_cuda() ? cpus - 1 : cpus / 2);
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

struct EvalResult {
  double loss = 0, accuracy = 0, auc = 0;
};

// Throws on a collective failure inside autograd; caught around each step.
void AllReduceOrThrow(Collective* c, torch::Tensor& t) {
  absl::Status st = c->AllReduceSum(t);
  if (!st.ok()) throw std::runtime_error(std::string(st.message()));
}

// Asked before batch k of precise BatchNorm and validation: true stops them
// (CANCELLED). The same on every rank (Trainer::StopAgreed); empty: never.
using StopVote = std::function<absl::StatusOr<bool>(int64_t k)>;

absl::Status VoteToGoOn(const StopVote& stop, int64_t k, const char* what) {
  if (!stop) return absl::OkStatus();
  DFC_ASSIGN_OR_RETURN(const bool stopping, stop(k));
  return stopping ? absl::CancelledError(absl::StrCat(what, " stopped as asked")) : absl::OkStatus();
}

// Evaluates the loader's `records` (in order); with a collective each rank
// scores its share and the scores are summed into place so every rank sees
// them all.
absl::StatusOr<EvalResult> Evaluate(DetectorImpl& model, BatchLoader& loader, const std::vector<RecordRef>& records,
                                    const std::string& loss_kind, const torch::Device& device, Collective* collective,
                                    int64_t batch_size, const std::function<void()>& progress,
                                    const StopVote& stop = {}) {
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
  for (int64_t k = 0;; ++k) {
    if (k < static_cast<int64_t>(plan.steps.size())) DFC_RETURN_IF_ERROR(VoteToGoOn(stop, k, "validation"));
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
                                     const torch::Device& device, const std::function<void()>& progress,
                                     const StopVote& stop = {}) {
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
    DFC_RETURN_IF_ERROR(VoteToGoOn(stop, static_cast<int64_t>(k), "precise BatchNorm"));
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
  std::string name;  // EpochMetrics.phase
  std::vector<RecordRef> train, val;
  int epochs = 0;
  int patience = 0;
  std::string out_dir;
  bool resume = false;
};

// Per-epoch sums of one rank, then of all ranks.
struct EpochTotals {
  double loss_sum = 0, correct = 0, seen = 0;
  // The running sums on the device, read into loss_sum/correct every few
  // steps (a read waits for the device).
  torch::Tensor loss_dev, correct_dev;
  double data_s = 0, compute_s = 0, wait_s = 0, train_seconds = 0;
  int64_t steps = 0;
  Clock::time_point start;
};

// The epochs a checkpoint's metrics history records (what a resumed run and
// its result need of them).
std::vector<EpochMetrics> HistoryFromJson(const nlohmann::json& history, const std::string& phase) {
  std::vector<EpochMetrics> out;
  if (!history.is_array()) return out;
  for (const auto& h : history) {
    if (!h.is_object()) continue;
    EpochMetrics m;
    m.phase = phase;
    m.epoch = h.value("epoch", 0);
    m.val_accuracy = h.value("val_accuracy", 0.0);
    m.val_auc = h.value("val_auc", 0.0);
    m.val_loss = h.value("val_loss", 0.0);
    m.images_per_second = h.value("images_per_second", 0.0);
    out.push_back(m);
  }
  return out;
}

// The epoch with the best validation accuracy (the first of equals) and that
// accuracy; {0, -1} for none. The rule early stopping and best.ckpt follow.
std::pair<int, double> BestEpoch(const std::vector<EpochMetrics>& history) {
  std::pair<int, double> best{0, -1.0};
  for (const EpochMetrics& m : history) {
    if (m.val_accuracy > best.second) best = {m.epoch, m.val_accuracy};
  }
  return best;
}

// The epoch count a finished selection phase chose, from its latest.ckpt.
absl::StatusOr<int> SelectedEpochs(const std::string& selection_dir) {
  const std::string path = run_dir::Checkpoint(selection_dir, run_dir::kLatest);
  auto meta = ReadCheckpointMeta(path);
  if (!meta.ok()) return absl::Status(meta.status().code(), absl::StrCat("--resume: ", meta.status().message()));
  const int best = BestEpoch(HistoryFromJson(nlohmann::json::parse(meta->metrics_json, nullptr, false), "")).first;
  if (best < 1) return absl::DataLossError(absl::StrCat("--resume: '", path, "' records no validated epoch"));
  return best;
}

// One phase of training, in named steps: SetUp, Resume, then per epoch
// TrainEpoch (its Steps), Validate and Checkpoint; Summary at the end.
class Trainer {
 public:
  Trainer(const TrainOptions& o, const ShardSet& shards, const Phase& phase, TrainObserver* obs)
      : o_(o), shards_(shards), phase_(phase), obs_(obs), device_(DefaultDevice()) {}

  absl::StatusOr<TrainResult> Run() {
    t_start_ = Clock::now();
    DFC_RETURN_IF_ERROR(SetUp());
    DFC_RETURN_IF_ERROR(Resume());
    SetUpStep();
    for (int epoch = start_epoch_; epoch < phase_.epochs; ++epoch) {
      if (phase_.patience > 0 && best_epoch_ > 0 && epoch - best_epoch_ >= phase_.patience) break;  // early stopping
      DFC_ASSIGN_OR_RETURN(EpochTotals totals, TrainEpoch(epoch));
      DFC_ASSIGN_OR_RETURN(EpochMetrics m, Validate(epoch, totals));
      DFC_RETURN_IF_ERROR(Checkpoint(m));
      if (obs_) obs_->OnEpoch(m);
    }
    return Summary();
  }

 private:
  // The model (initial weights, device), the collective's broadcast and
  // gradient synchronizer, the optimizer, the output folder and the loaders.
  absl::Status SetUp() {
    torch::manual_seed(o_.seed);
    DFC_ASSIGN_OR_RETURN(model_, MakeDetector(o_.arch, o_.detector));
    if (!o_.init_weights.empty()) DFC_RETURN_IF_ERROR(LoadWeightsByContent(o_.init_weights, *model_));
    model_->to(device_);
    collective_ = o_.collective;
    world_ = collective_ ? collective_->world_size() : 1;
    rank_ = collective_ ? collective_->rank() : 0;
    writer_ = rank_ == 0;  // rank 0 alone writes checkpoints and metrics
    if (world_ > 1) {
      std::vector<torch::Tensor> state;
      for (auto& p : model_->parameters()) state.push_back(p.data());
      for (auto& b : model_->buffers()) state.push_back(b);
      DFC_RETURN_IF_ERROR(collective_->Broadcast(state, 0));
      Collective* const c = collective_;
      model_->SetBatchNormAllReduce([c](torch::Tensor& t) { AllReduceOrThrow(c, t); });
      sync_ = std::make_unique<GradientSynchronizer>(collective_, model_->parameters(), o_.bucket_bytes,
                                                     o_.overlap_allreduce);
    }
    for (auto& p : model_->parameters()) {
      if (p.requires_grad()) trainable_.push_back(p);
    }
    // o_.lr and o_.adam_eps were resolved by RunTraining.
    optimizer_ = std::make_unique<torch::optim::Adam>(trainable_, torch::optim::AdamOptions(o_.lr).eps(o_.adam_eps));
    amp_ = AutocastType(o_.precision);
    // fp16 only: dynamic loss scaling (as torch.cuda.amp.GradScaler: x2 after
    // 2000 finite steps, /2 and the step skipped on inf/NaN gradients). The
    // gradients are all-reduced first, so every rank takes the same decision.
    loss_scale_ = o_.precision == "fp16" ? 65536.0 : 1.0;

    std::error_code ec;
    fs::create_directories(phase_.out_dir, ec);
    if (ec) return absl::InvalidArgumentError(absl::StrCat("--out: cannot create '", phase_.out_dir, "': ", ec.message()));
    latest_ = run_dir::Checkpoint(phase_.out_dir, run_dir::kLatest);
    interrupted_ = run_dir::Checkpoint(phase_.out_dir, run_dir::kInterrupted);
    best_ = run_dir::Checkpoint(phase_.out_dir, run_dir::kBest);
    metrics_path_ = run_dir::Metrics(phase_.out_dir);

    BatchLoaderOptions lo;
    lo.batch_size = std::max(1, o_.batch_size / world_);
    lo.image_size = model_->input_size();
    lo.seed = o_.seed;
    lo.threads = o_.loader_threads;
    train_loader_ = std::make_unique<BatchLoader>(&shards_, phase_.train, lo);
    bn_loader_ = std::make_unique<BatchLoader>(&shards_, phase_.train, lo);
    lo.shuffle = false;
    val_loader_ = std::make_unique<BatchLoader>(&shards_, phase_.val, lo);
    result_.train_images = static_cast<int64_t>(phase_.train.size());
    result_.val_images = static_cast<int64_t>(phase_.val.size());
    return absl::OkStatus();
  }

  // --resume: weights, optimizer, RNG, epoch, step and history from
  // interrupted.ckpt where it is ahead of latest.ckpt (with how far its epoch
  // got), else from latest.ckpt; otherwise a fresh metrics.jsonl, and no
  // interrupted.ckpt of an earlier run to be taken up later.
  absl::Status Resume() {
    std::error_code ec;
    if (!phase_.resume) {
      if (writer_ && (fs::exists(metrics_path_, ec) || fs::exists(interrupted_, ec))) {
        DFC_RETURN_IF_ERROR(MayWrite());
        fs::remove(metrics_path_, ec);
        RemoveInterrupted();
      }
      return absl::OkStatus();
    }
    std::string from = latest_;
    if (fs::exists(interrupted_, ec)) {
      auto mid = run_dir::ReadSidecar(interrupted_);
      auto end = run_dir::ReadSidecar(latest_);
      // One older than latest.ckpt is left over: a later attempt took over
      // before it was removed.
      if (!fs::exists(latest_, ec) || (mid.ok() && (!end.ok() || mid->epoch >= end->epoch))) from = interrupted_;
    }
    auto meta = LoadCheckpoint(from, *model_, optimizer_.get(), /*restore_rng=*/true);
    if (!meta.ok()) return absl::Status(meta.status().code(), absl::StrCat("--resume: ", meta.status().message()));
    start_epoch_ = static_cast<int>(meta->epoch);
    step_ = meta->step;
    history_ = nlohmann::json::parse(meta->metrics_json, nullptr, false);
    if (history_.is_discarded()) history_ = nlohmann::json::array();
    result_.history = HistoryFromJson(history_, phase_.name);
    std::tie(best_epoch_, best_acc_) = BestEpoch(result_.history);
    resume_point_ = from;
    if (!meta->epoch_progress_json.empty()) {
      resume_progress_ = nlohmann::json::parse(meta->epoch_progress_json, nullptr, false);
      const auto steps = resume_progress_.is_object() ? resume_progress_.find("step_in_epoch") : resume_progress_.end();
      if (steps == resume_progress_.end() || !steps->is_number_integer() || steps->get<int64_t>() < 1) {
        return absl::DataLossError(absl::StrCat("--resume: '", from, "' records no step of the epoch it stopped in"));
      }
      resume_step_ = steps->get<int64_t>();
      if (obs_) {
        obs_->OnPhase(absl::StrCat("resuming ", phase_.name, phase_.name.empty() ? "" : " ", "epoch ", start_epoch_ + 1,
                                   " after its step ", resume_step_, " (", from, ")"));
      }
    }
    return writer_ ? TrimMetricsFile() : absl::OkStatus();
  }

  void RemoveInterrupted() {
    std::error_code ec;
    fs::remove(interrupted_, ec);
    fs::remove(run_dir::Sidecar(interrupted_), ec);
  }

  // An epoch's metrics line is written just before its latest.ckpt: a run
  // stopped in between left a line for an epoch that will be trained again.
  // Keep only the epochs the checkpoint holds (and no torn last line).
  absl::Status TrimMetricsFile() {
    std::error_code ec;
    if (!fs::exists(metrics_path_, ec)) return absl::OkStatus();
    DFC_ASSIGN_OR_RETURN(const std::string text, ReadFile(metrics_path_));
    std::string kept;
    bool dropped = false;
    for (const absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
      const int epoch = run_dir::MetricsLineEpoch(nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false));
      const bool held = epoch >= 1 && epoch <= start_epoch_;
      if (held) absl::StrAppend(&kept, line, "\n");
      dropped |= !held;
    }
    if (!dropped) return absl::OkStatus();
    DFC_RETURN_IF_ERROR(MayWrite());
    return WriteFileAtomically(metrics_path_, kept);
  }

  absl::Status MayWrite() const { return o_.may_write ? o_.may_write() : absl::OkStatus(); }

  // How steps run: a captured CUDA graph (--cuda-graphs) or eagerly; after
  // Resume, since the graph's optimizer takes over the restored state.
  void SetUpStep() {
    uploader_ = BatchUploader::Create(device_);
    // "on" where no graph can be captured was refused by ValidateOptions.
    const std::string why_eager = o_.cuda_graphs == "off" ? "--cuda-graphs off" : WhyNoCudaGraph(o_, device_, world_);
    if (!why_eager.empty()) {
      if (obs_) obs_->OnPhase(absl::StrCat("training step: eager (", why_eager, ")"));
      return;
    }
    GraphedTrainStep::Options go;
    go.loss = o_.loss;
    go.autocast = amp_;
    go.batch_rows = std::max(1, o_.batch_size / world_);
    graphed_ = std::make_unique<GraphedTrainStep>(*model_, *optimizer_, device_, go, NewCudaGraphBackend(device_));
    if (obs_) {
      obs_->OnPhase(absl::StrCat("training step: CUDA graph (batches of ", go.batch_rows, " captured after ",
                                 go.warmup_steps, " warm-up steps; a partial last batch runs eagerly)"));
    }
  }

  // One epoch of steps over this rank's share of every global batch.
  absl::StatusOr<EpochTotals> TrainEpoch(int epoch) {
    lr_ = ScheduledLr(o_.lr_schedule, o_.lr, epoch);
    for (auto& group : optimizer_->param_groups()) {
      static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr_);
    }
    if (graphed_) graphed_->SetLr(lr_);
    model_->train();
    const RankEpochPlan plan = PlanRankEpoch(static_cast<uint32_t>(phase_.train.size()), o_.batch_size, world_, rank_,
                                             o_.seed, static_cast<uint64_t>(epoch));
    EpochTotals t;
    t.steps = static_cast<int64_t>(plan.steps.size());
    t.loss_dev = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device_));
    t.correct_dev = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device_));
    t.start = Clock::now();
    // Resumed from interrupted.ckpt: the epoch goes on after its saved step,
    // with its totals so far (all ranks' sums, on rank 0).
    int64_t first = 0;
    if (resume_step_ > 0 && epoch == start_epoch_) {
      first = std::min<int64_t>(resume_step_, t.steps);
      const nlohmann::json& p = resume_progress_;
      if (rank_ == 0) {
        t.loss_dev.fill_(p.value("loss_sum", 0.0));
        t.correct_dev.fill_(p.value("correct", 0.0));
        t.seen = p.value("seen", 0.0);
        t.loss_sum = p.value("loss_sum", 0.0);
        t.correct = p.value("correct", 0.0);
      }
      t.data_s = p.value("data_seconds", 0.0);
      t.compute_s = p.value("compute_seconds", 0.0);
      t.wait_s = p.value("wait_seconds", 0.0);
      t.start -= std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(p.value("seconds", 0.0)));
      loss_scale_ = p.value("loss_scale", loss_scale_);
      finite_steps_ = p.value("finite_steps", finite_steps_);
    }
    resume_step_ = 0;
    train_loader_->StartEpochWithBatches(
        std::vector<std::vector<uint32_t>>(plan.steps.begin() + first, plan.steps.end()));
    if (obs_) obs_->OnEpochStart(phase_.name, epoch + 1, phase_.epochs, t.steps);
    for (int64_t s = first; s < t.steps; ++s) {
      DFC_ASSIGN_OR_RETURN(const bool stop, StopAgreed(s));
      if (stop) return StopAt(epoch, s, t);
      const auto t_data = Clock::now();
      DFC_ASSIGN_OR_RETURN(std::optional<Batch> batch, train_loader_->Next());
      if (!batch) return absl::InternalError("the loader ended before the epoch's plan");
      const auto t_compute = Clock::now();
      t.data_s += Seconds(t_data, t_compute);
      model_->SetBatchShard(plan.offset[s], plan.global_batch[s]);
      DFC_RETURN_IF_ERROR(Step(*batch, plan.global_batch[s], &t));
      t.seen += batch->count;
      ++step_;
      stepped_ = true;
      if (o_.progress) o_.progress();
      // On a GPU the running sums are read every kReadEvery steps, so that
      // the host queues the next steps while the device works.
      const bool read = !device_.is_cuda() || (s + 1) % kReadEvery == 0 || s + 1 == t.steps;
      if (read) {
        t.loss_sum = t.loss_dev.item<double>();
        t.correct = t.correct_dev.item<double>();
      }
      t.compute_s += Seconds(t_compute, Clock::now());
      if (sync_) t.wait_s += sync_->last_wait_seconds();
      if (read && obs_ && t.seen > 0) obs_->OnStep(epoch + 1, s + 1, t.steps, t.loss_sum / t.seen, t.correct / t.seen);
    }
    t.train_seconds = Seconds(t.start, Clock::now());
    if (o_.stop_requested) {  // what a stop during validation saves (StopAt)
      rng_after_steps_ = CpuRngState();
      buffers_after_steps_.clear();
      for (const torch::Tensor& b : model_->buffers()) buffers_after_steps_.push_back(b.detach().clone());
    }
    return t;
  }

  // Whether to stop before step `s` (o_.stop_requested): every rank asks, and
  // the ranks of a data-parallel job sum their answers, so they all stop at
  // the same step. On a GPU they do so every kReadEvery steps only: the sum
  // waits for the device.
  absl::StatusOr<bool> StopAgreed(int64_t s) {
    if (!o_.stop_requested) return false;
    if (world_ > 1 && device_.is_cuda() && s % kReadEvery != 0) return false;
    bool stop = o_.stop_requested();
    if (world_ > 1) {
      torch::Tensor votes = torch::tensor({stop ? 1.0 : 0.0}, torch::kFloat64);
      DFC_RETURN_IF_ERROR(collective_->AllReduceSum(votes));
      stop = votes.item<double>() > 0;
    }
    stop_agreed_ = stop;
    return stop;
  }

  // Training stops before step `s` of `epoch` (0-based): rank 0 saves
  // interrupted.ckpt with the epoch's progress (the totals summed over the
  // ranks) unless no step was taken since the last checkpoint; CANCELLED
  // saying where it stopped and what --resume goes on from.
  absl::Status StopAt(int epoch, int64_t s, EpochTotals& t) {
    const std::string where =
        absl::StrCat(phase_.name, phase_.name.empty() ? "" : " ", "epoch ", epoch + 1, " after step ", s, " of ",
                     t.steps, s == t.steps ? ", before its validation ended" : "");
    if (stepped_) {
      // Stopped in precise BatchNorm or validation: the RNG and the
      // buffers as the epoch's last step left them, which the resumed run's
      // precise BatchNorm starts from (its training-mode passes draw dropout
      // masks and count batches in every BatchNorm).
      if (s == t.steps && rng_after_steps_.defined()) {
        SetCpuRngState(rng_after_steps_);
        torch::NoGradGuard no_grad;
        const auto buffers = model_->buffers();
        for (size_t i = 0; i < buffers.size() && i < buffers_after_steps_.size(); ++i) {
          buffers[i].copy_(buffers_after_steps_[i]);
        }
      }
      torch::Tensor sums = torch::tensor({t.loss_dev.item<double>(), t.correct_dev.item<double>(), t.seen},
                                         torch::kFloat64);
      if (world_ > 1) DFC_RETURN_IF_ERROR(collective_->AllReduceSum(sums));
      const nlohmann::json progress = {{"step_in_epoch", s},
                                       {"loss_sum", sums[0].item<double>()},
                                       {"correct", sums[1].item<double>()},
                                       {"seen", sums[2].item<double>()},
                                       // the training part's, not the validation's
                                       {"seconds", s == t.steps ? t.train_seconds : Seconds(t.start, Clock::now())},
                                       {"data_seconds", t.data_s},
                                       {"compute_seconds", t.compute_s},
                                       {"wait_seconds", t.wait_s},
                                       {"loss_scale", loss_scale_},
                                       {"finite_steps", finite_steps_}};
      CheckpointMeta meta = MetaAfter(epoch);
      meta.epoch_progress_json = progress.dump();
      if (graphed_) graphed_->SyncOptimizerState();
      if (writer_) {
        DFC_RETURN_IF_ERROR(MayWrite());
        DFC_RETURN_IF_ERROR(SaveCheckpoint(interrupted_, *model_, optimizer_.get(), meta));
      }
      if (world_ > 1) DFC_RETURN_IF_ERROR(collective_->Barrier());
      resume_point_ = interrupted_;
      stepped_ = false;
    }
    if (obs_) obs_->OnPhase(absl::StrCat("stopped as asked in ", where));
    if (resume_point_.empty()) {
      return absl::CancelledError(absl::StrCat("training stopped as asked in ", where, ", before any step: nothing "
                                               "to resume from was saved"));
    }
    return absl::CancelledError(absl::StrCat("training stopped as asked in ", where, "; --resume goes on from '",
                                             resume_point_, "'"));
  }

  // Forward (autocast), the loss in float32, backward with the bucketed
  // all-reduce, the optimizer step (skipped on non-finite fp16 gradients).
  absl::Status Step(const Batch& batch, int64_t global_batch, EpochTotals* t) {
    torch::Tensor pixels, y;
    try {
      std::tie(pixels, y) = uploader_->Upload(batch);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("training step ", step_ + 1, ": copying the batch failed: ", e.what()));
    }
    if (graphed_) {
      absl::Status st = graphed_->Run(pixels, y, global_batch);
      if (!st.ok()) return absl::Status(st.code(), absl::StrCat("training step ", step_ + 1, ": ", st.message()));
      t->loss_dev.add_(graphed_->loss_sum());
      t->correct_dev.add_(graphed_->correct());
      return absl::OkStatus();
    }
    torch::Tensor x = PixelsToFloat(pixels);
    optimizer_->zero_grad();
    try {
      torch::Tensor logits;
      {
        AutocastGuard autocast(device_.type(), amp_);
        logits = model_->forward(x);
      }
      logits = logits.to(torch::kFloat32);
      // Each rank's share of the global batch's mean loss; the gradient
      // all-reduce averages over ranks, hence the factor world / global.
      const double scale = static_cast<double>(world_) / static_cast<double>(global_batch);
      torch::Tensor loss_sum = LossSum(o_.loss, logits, y);
      if (sync_) sync_->BeginStep();
      (loss_sum * (scale * loss_scale_)).backward();
      if (sync_) DFC_RETURN_IF_ERROR(sync_->Finish());
      if (loss_scale_ != 1.0) {
        std::vector<torch::Tensor> checks;
        for (auto& p : trainable_) {
          if (!p.grad().defined()) continue;
          p.grad().div_(loss_scale_);
          checks.push_back(torch::isfinite(p.grad()).all());
        }
        const bool finite = checks.empty() || torch::stack(checks).all().item<bool>();  // one sync
        if (finite) {
          optimizer_->step();
          if (++finite_steps_ % 2000 == 0) loss_scale_ *= 2;
        } else {
          loss_scale_ = std::max(1.0, loss_scale_ / 2);
          finite_steps_ = 0;
        }
      } else {
        optimizer_->step();
      }
      t->loss_dev.add_(loss_sum.detach());
      t->correct_dev.add_(((logits.detach() > 0).to(torch::kFloat32) == y).sum());
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("training step ", step_ + 1, " failed: ", e.what()));
    }
    return absl::OkStatus();
  }

  // Precise BatchNorm, the epoch's totals over all ranks, the validation
  // pass: the epoch's metrics.
  // A stop asked meanwhile ends them (the ranks vote before each batch) and
  // saves the epoch as trained to its last step.
  absl::StatusOr<EpochMetrics> Validate(int epoch, EpochTotals& t) {
    StopVote vote;
    if (o_.stop_requested) vote = [this](int64_t k) { return StopAgreed(k); };
    if (o_.precise_bn_batches > 0) {
      absl::Status st = RecomputeBatchNormStats(*model_, *bn_loader_, phase_.train, o_.precise_bn_batches,
                                                o_.batch_size, world_, rank_, o_.seed, epoch, device_, o_.progress, vote);
      if (stop_agreed_) return StopAt(epoch, t.steps, t);
      DFC_RETURN_IF_ERROR(st);
    }
    // All ranks' totals; t keeps this rank's (a stop below saves their sum).
    double loss_sum = t.loss_sum, correct = t.correct, seen = t.seen;
    if (world_ > 1) {
      torch::Tensor totals = torch::tensor({t.loss_sum, t.correct, t.seen}, torch::kFloat64);
      DFC_RETURN_IF_ERROR(collective_->AllReduceSum(totals));
      loss_sum = totals[0].item<double>();
      correct = totals[1].item<double>();
      seen = totals[2].item<double>();
    }
    absl::StatusOr<EvalResult> ev = Evaluate(*model_, *val_loader_, phase_.val, o_.loss, device_, collective_,
                                             std::max(1, o_.batch_size / world_), o_.progress, vote);
    if (stop_agreed_) return StopAt(epoch, t.steps, t);
    if (!ev.ok()) return ev.status();
    EpochMetrics m;
    m.phase = phase_.name;
    m.epoch = epoch + 1;
    m.lr = lr_;
    m.loss = seen ? loss_sum / seen : 0;
    m.accuracy = seen ? correct / seen : 0;
    m.val_loss = ev->loss;
    m.val_accuracy = ev->accuracy;
    m.val_auc = ev->auc;
    m.images_per_second = t.train_seconds > 0 ? seen / t.train_seconds : 0;
    m.data_wait_share = t.train_seconds > 0 ? t.data_s / t.train_seconds : 0;
    m.step_data_seconds = t.steps ? t.data_s / t.steps : 0;
    m.step_compute_seconds = t.steps ? (t.compute_s - t.wait_s) / t.steps : 0;
    m.step_allreduce_wait_seconds = t.steps ? t.wait_s / t.steps : 0;
    m.world_size = world_;
    m.seconds = Seconds(t.start, Clock::now());
    m.step = step_;
    return m;
  }

  // What a checkpoint written now, after `epochs` finished epochs, records.
  CheckpointMeta MetaAfter(int64_t epochs) const {
    CheckpointMeta meta;
    meta.arch = o_.arch;
    meta.epoch = epochs;
    meta.step = step_;
    meta.lr = lr_;
    meta.metrics_json = history_.dump();
    meta.options_json = o_.ToJson();
    return meta;
  }

  // metrics.jsonl, latest.ckpt, epoch-N.ckpt (weights only) and best.ckpt
  // (rank 0), then a barrier so that a restart finds them complete.
  absl::Status Checkpoint(const EpochMetrics& m) {
    result_.history.push_back(m);
    history_.push_back(nlohmann::json::parse(m.ToJson()));
    const CheckpointMeta meta = MetaAfter(m.epoch);
    const bool improved = m.val_accuracy > best_acc_;
    if (improved) {
      best_acc_ = m.val_accuracy;
      best_epoch_ = m.epoch;
    }
    if (graphed_) graphed_->SyncOptimizerState();  // the step count, for latest.ckpt
    if (writer_) {
      DFC_RETURN_IF_ERROR(MayWrite());
      nlohmann::ordered_json line = nlohmann::ordered_json::parse(m.ToJson());
      line["config"] = nlohmann::ordered_json::parse(o_.ToJson());
      DFC_RETURN_IF_ERROR(AppendLine(metrics_path_, line.dump()));
      DFC_RETURN_IF_ERROR(SaveCheckpoint(latest_, *model_, optimizer_.get(), meta));
      // Weights only, so that any epoch can be evaluated later (`--checkpoint N`).
      DFC_RETURN_IF_ERROR(SaveCheckpoint(run_dir::EpochCheckpoint(phase_.out_dir, m.epoch), *model_, nullptr, meta));
      if (improved) DFC_RETURN_IF_ERROR(SaveCheckpoint(best_, *model_, optimizer_.get(), meta));
      RemoveInterrupted();  // latest.ckpt is ahead of it now
    }
    if (world_ > 1) DFC_RETURN_IF_ERROR(collective_->Barrier());
    resume_point_ = latest_;
    stepped_ = false;
    return absl::OkStatus();
  }

  // The phase's result: the last epoch's validation, the best epoch, mean images/s.
  absl::StatusOr<TrainResult> Summary() {
    if (result_.history.empty()) return absl::FailedPreconditionError("no epoch was trained");
    const EpochMetrics& last = result_.history.back();
    result_.epochs = last.epoch;
    result_.best_epoch = best_epoch_;
    result_.val_accuracy = last.val_accuracy;
    result_.val_auc = last.val_auc;
    result_.val_loss = last.val_loss;
    double ips = 0;
    int counted = 0;
    for (const EpochMetrics& e : result_.history) {
      if (e.images_per_second > 0) {
        ips += e.images_per_second;
        ++counted;
      }
    }
    result_.images_per_second = counted ? ips / counted : 0;
    result_.seconds = Seconds(t_start_, Clock::now());
    result_.checkpoint = latest_;
    return result_;
  }

  const TrainOptions& o_;
  const ShardSet& shards_;
  const Phase& phase_;
  TrainObserver* const obs_;
  const torch::Device device_;
  Clock::time_point t_start_;
  Detector model_{nullptr};
  Collective* collective_ = nullptr;
  int world_ = 1, rank_ = 0;
  bool writer_ = true;
  std::unique_ptr<GradientSynchronizer> sync_;
  std::vector<torch::Tensor> trainable_;
  std::unique_ptr<torch::optim::Adam> optimizer_;
  std::unique_ptr<BatchUploader> uploader_;
  std::unique_ptr<GraphedTrainStep> graphed_;  // null: eager steps
  static constexpr int64_t kReadEvery = 8;
  std::optional<at::ScalarType> amp_;
  double loss_scale_ = 1.0;
  int64_t finite_steps_ = 0;
  std::string latest_, best_, interrupted_, metrics_path_;
  std::unique_ptr<BatchLoader> train_loader_, bn_loader_, val_loader_;
  TrainResult result_;
  int start_epoch_ = 0;
  // Resumed from interrupted.ckpt: the steps of epoch start_epoch_ it took,
  // and its progress object (CheckpointMeta::epoch_progress_json).
  int64_t resume_step_ = 0;
  nlohmann::json resume_progress_;
  std::string resume_point_;  // the checkpoint a --resume would go on from now; "" none
  bool stepped_ = false;      // a step was taken since resume_point_ was written
  bool stop_agreed_ = false;  // StopAgreed said stop
  // With stop_requested: the CPU RNG and the model's buffers after the
  // epoch's last step.
  torch::Tensor rng_after_steps_;
  std::vector<torch::Tensor> buffers_after_steps_;
  int64_t step_ = 0;
  double lr_ = 0;
  nlohmann::json history_ = nlohmann::json::array();
  double best_acc_ = -1;
  int best_epoch_ = 0;
};

absl::StatusOr<TrainResult> TrainPhase(const TrainOptions& o, const ShardSet& shards, const Phase& phase,
                                       TrainObserver* obs) {
  return Trainer(o, shards, phase, obs).Run();
}

}  // namespace

double ScheduledLr(const std::string& schedule, double base_lr, int epoch) {
  if (schedule != "notebook" || epoch < 2) return base_lr;
  // The notebook's scheduler returns lr * exp(-0.2) from the third epoch on.
  return base_lr * std::exp(-0.2 * (epoch - 1));
}

std::string TrainOptions::ToJson() const {
  // Paths need not be UTF-8; JSON must be (common/utf8.h).
  nlohmann::ordered_json j = {{"model", arch},
                              {"data", ValidUtf8(data_dir)},
                              {"epochs", epochs},
                              {"batch_size", batch_size},
                              {"lr", lr},
                              {"adam_eps", adam_eps},
                              {"loss", loss},
                              {"lr_schedule", lr_schedule},
                              {"early_stopping_patience", early_stopping_patience},
                              {"init", ValidUtf8(init_weights)},
                              {"seed", seed},
                              {"recipe", recipe},
                              {"precision", precision},
                              {"cuda_graphs", cuda_graphs},
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
                              {"checkpoint", ValidUtf8(checkpoint)}};
  return j.dump();
}

TrainOptions TrainOptionsFromConfig(const v1::TrainingConfig& c) {
  TrainOptions o;
  o.arch = ModelName(c.model());
  o.data_dir = c.data();
  o.epochs = c.epochs();
  o.batch_size = c.batch_size();
  o.lr = c.lr();
  o.adam_eps = c.adam_eps();
  if (c.loss() != v1::LOSS_UNSPECIFIED) o.loss = LossName(c.loss());
  if (c.lr_schedule() != v1::LR_SCHEDULE_UNSPECIFIED) o.lr_schedule = LrScheduleName(c.lr_schedule());
  o.early_stopping_patience = c.early_stopping_patience();
  o.init_weights = c.init();
  o.seed = c.seed();
  if (c.bn_momentum() > 0) o.detector.bn_momentum = c.bn_momentum();
  o.max_train_images = c.max_train_images();
  o.max_val_images = c.max_val_images();
  o.threads = c.threads_per_rank();
  o.recipe = c.recipe();
  o.precision = PrecisionName(c.precision());
  o.cuda_graphs = CudaGraphsName(c.cuda_graphs());
  o.precise_bn_batches = c.precise_bn_batches();
  return o;
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
  if (o.cuda_graphs.empty()) o.cuda_graphs = "auto";
  return o;
}

absl::StatusOr<TrainResult> RunTraining(const TrainOptions& given, TrainObserver* obs) {
  DFC_RETURN_IF_ERROR(ValidateOptions(given));
  // Every hyper-parameter as this run uses it: printed now, kept in every
  // metrics line and checkpoint.
  TrainOptions o = ResolveOptions(given);
  if (obs) obs->OnPhase("hyper-parameters: " + o.ToJson());
  const CpuBudget budget = UsableCpuBudget();
  const int cpus = o.cpus > 0 ? o.cpus : CpuShare(budget.usable, o.collective ? o.collective->world_size() : 1);
  if (o.threads <= 0) o.threads = cpus;
  if (o.loader_threads <= 0) o.loader_threads = DefaultLoaderThreads(DefaultDevice(), cpus);
  torch::set_num_threads(o.threads);
  if (obs) {
    obs->OnPhase(absl::StrCat("threads: ", o.threads, " intra-op, ", o.loader_threads, " decoding, for ", cpus,
                              cpus == 1 ? " CPU" : " CPUs", "; this process may run on ", budget.Describe()));
  }
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
  // --resume needs something to go on from: in the run, or (the notebook
  // recipe) first in its selection phase. Asked before the lock creates OUT.
  if (const std::string first = o.recipe == "notebook" ? run_dir::SelectionDir(o.out_dir) : o.out_dir;
      o.resume && !run_dir::PhaseHasResumePoint(first)) {
    return absl::NotFoundError(
        absl::StrCat("--resume: no checkpoint at '", first, "/latest.ckpt' (nor interrupted.ckpt)"));
  }
  // Rank 0 writes the run directory: a second run there is refused while
  // this one trains.
  int lock_fd = -1;
  absl::Cleanup unlock = [&lock_fd] {
    if (lock_fd >= 0) ::close(lock_fd);
  };
  if (o.collective == nullptr || o.collective->rank() == 0) {
    std::string note;
    auto fd = run_dir::LockForWriting(o.out_dir, o.run_lock_shared, o.run_holder.empty() ? "dfc train" : o.run_holder,
                                      &note);
    if (!fd.ok()) return fd.status();
    lock_fd = *fd;
    if (obs && !note.empty()) obs->OnPhase(note);
  }
  if (o.recipe != "notebook") {
    Phase phase{"", train, val, o.epochs, o.early_stopping_patience, o.out_dir, o.resume};
    return TrainPhase(o, *shards, phase, obs);
  }
  // The notebook's protocol: choose the epoch count on a 50/50 split of the
  // training split, then retrain from scratch on all of it. --resume goes on
  // in the phase that was interrupted: the retraining once it has a
  // checkpoint (the selection is then complete, and its checkpoint tells the
  // epoch count), else the selection.
  const bool retraining_started = run_dir::PhaseHasResumePoint(o.out_dir);
  Phase select;
  select.name = run_dir::kSelection;
  select.out_dir = run_dir::SelectionDir(o.out_dir);
  std::vector<int32_t> labels;
  for (const RecordRef& r : train) labels.push_back(r.label);
  const std::vector<bool> is_val = KerasValidationMask(labels, 2, 0.5, /*from_end=*/false);
  for (size_t i = 0; i < train.size(); ++i) (is_val[i] ? select.val : select.train).push_back(train[i]);
  select.epochs = o.epochs;
  select.patience = o.early_stopping_patience;
  select.resume = o.resume;
  TrainResult chosen;
  if (o.resume && retraining_started) {
    DFC_ASSIGN_OR_RETURN(chosen.best_epoch, SelectedEpochs(select.out_dir));
    if (obs) obs->OnPhase(absl::StrCat("the selection phase chose ", chosen.best_epoch, " epochs (", select.out_dir, ")"));
  } else {
    if (obs) {
      obs->OnPhase(absl::StrCat(o.resume ? "resuming the selection of" : "selecting", " the epoch count on a 50/50 "
                                "split of the training split (", select.train.size(), " / ", select.val.size(),
                                " images, patience ", select.patience, ")"));
    }
    DFC_ASSIGN_OR_RETURN(chosen, TrainPhase(o, *shards, select, obs));
  }
  Phase final_phase{"", train, val, std::max(1, chosen.best_epoch), 0, o.out_dir, o.resume && retraining_started};
  if (obs) obs->OnPhase(absl::StrCat(final_phase.resume ? "resuming the retraining" : "retraining",
                                     " on the whole training split (", train.size(), " images) for ",
                                     final_phase.epochs, " epochs, evaluating on the validation split (", val.size(),
                                     " images)"));
  DFC_ASSIGN_OR_RETURN(TrainResult result, TrainPhase(o, *shards, final_phase, obs));
  result.seconds += chosen.seconds;
  return result;
}

}  // namespace dfc
