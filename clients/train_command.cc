#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "clients/commands.h"
#include "common/progress.h"
#include "common/subprocess.h"
#include "training/collective.h"
#include "training/rank_launcher.h"
#include "training/trainer.h"

namespace dfc {
namespace {

// Prints one line per epoch to stdout and a live bar on a terminal.
class ConsoleObserver : public TrainObserver {
 public:
  void OnPhase(const std::string& d) override { std::printf("== %s\n", d.c_str()); std::fflush(stdout); }
  void OnEpochStart(int epoch, int max_epochs, int64_t steps) override {
    bar_ = std::make_unique<ProgressBar>("epoch " + std::to_string(epoch) + "/" + std::to_string(max_epochs), steps);
    max_epochs_ = max_epochs;
  }
  void OnStep(int, int64_t step, int64_t, double loss, double acc) override {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "loss %.4f acc %.4f", loss, acc);
    if (bar_) bar_->Update(step, buf);
  }
  void OnEpoch(const EpochMetrics& m) override {
    if (bar_) bar_->Finish();
    std::printf("epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  val_auc %.4f  %.1f img/s  "
                "data-wait %.1f%%  lr %.3g  %s\n",
                m.epoch, max_epochs_, m.loss, m.accuracy, m.val_loss, m.val_accuracy, m.val_auc,
                m.images_per_second, 100 * m.data_wait_share, m.lr, FormatDuration(m.seconds).c_str());
    std::fflush(stdout);
  }

 private:
  std::unique_ptr<ProgressBar> bar_;
  int max_epochs_ = 0;
};

struct DistributedArgs {
  int world_size = 1;
  int rank = -1;        // set by the launcher in each rank process
  int master_port = 0;  // the rendezvous store, served by rank 0
};

int RunTrain(TrainOptions o, const DistributedArgs& d) {
  if (d.world_size > 1 && d.rank < 0) {
    // Launcher: one process per rank on this machine, supervised.
    RankLaunchOptions lo;
    lo.argv = CommandLine();
    lo.argv[0] = SelfExecutable();
    lo.world_size = d.world_size;
    absl::Status st = LaunchRanks(lo);
    if (!st.ok()) return ReportError(st);
    return kExitOk;
  }
  std::unique_ptr<Collective> collective;
  if (d.world_size > 1) {
    CollectiveOptions co;
    co.rank = d.rank;
    co.world_size = d.world_size;
    co.store_port = d.master_port;
    auto c = Collective::Connect(co);
    if (!c.ok()) return ReportError(c.status());
    collective = std::move(*c);
    o.collective = collective.get();
  }
  ConsoleObserver obs;
  const bool talk = d.rank <= 0;
  auto result = RunTraining(o, talk ? &obs : nullptr);
  if (!result.ok()) return ReportError(result.status());
  if (talk) std::printf("%s\n", result->ToJson().c_str());
  return kExitOk;
}

}  // namespace

void AddTrainCommand(CLI::App& app, RunFn* run) {
  auto o = std::make_shared<TrainOptions>();
  CLI::App* cmd = app.add_subcommand("train", "Train a detector in this process on a shard directory");
  cmd->add_option("--model", o->arch, "mesoinception4, meso4 or resnet50-vggface")->check(CLI::IsMember(DetectorNames()));
  cmd->add_option("--data", o->data_dir, "Shard directory (from `dfc shard`)")->required();
  cmd->add_option("--out", o->out_dir, "Output directory for checkpoints and metrics.jsonl")->required();
  cmd->add_option("--epochs", o->epochs, "Maximum epochs")->check(CLI::Range(1, 100000));
  cmd->add_option("--batch-size", o->batch_size, "Images per step")->check(CLI::Range(1, 4096));
  cmd->add_option("--lr", o->lr, "Adam learning rate (default: 1e-3 MesoNet, 1e-5 ResNet)")->check(CLI::Range(1e-12, 10.0));
  cmd->add_option("--adam-eps", o->adam_eps, "Adam epsilon (default: 1e-7 MesoNet, 1e-9 ResNet)")->check(CLI::Range(1e-20, 1.0));
  cmd->add_option("--loss", o->loss, "bce or mse")->check(CLI::IsMember({"bce", "mse"}));
  cmd->add_option("--lr-schedule", o->lr_schedule, "constant or notebook (x e^-0.2 per epoch after 2)")
      ->check(CLI::IsMember({"constant", "notebook"}));
  cmd->add_option("--early-stopping-patience", o->early_stopping_patience, "Epochs without val accuracy gain (0 = off)")
      ->check(CLI::Range(0, 100000));
  cmd->add_option("--init", o->init_weights, "Start from Keras .h5 weights or a DFC checkpoint");
  cmd->add_flag("--resume", o->resume, "Continue from OUT/latest.ckpt");
  cmd->add_option("--threads", o->threads, "Intra-op threads (0 = all cores)")->check(CLI::Range(0, 1024));
  cmd->add_option("--loader-threads", o->loader_threads, "Decode threads (0 = half the cores)")->check(CLI::Range(0, 1024));
  cmd->add_option("--seed", o->seed, "Random seed (init, shuffle, dropout)");
  cmd->add_option("--recipe", o->recipe, "notebook: choose epochs on a 50/50 split, retrain on all")
      ->check(CLI::IsMember({"notebook"}));
  cmd->add_option("--max-train-images", o->max_train_images, "Train on a deterministic subset (0 = all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  cmd->add_option("--max-val-images", o->max_val_images, "Validate on a deterministic subset (0 = all)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  cmd->add_option("--freeze-keras-layers", o->detector.freeze_keras_layers,
                  "ResNet: freeze non-BatchNorm layers among the first N Keras layers")
      ->check(CLI::Range(0, 100000));
  cmd->add_option("--precision", o->precision, "Forward-pass precision: fp32, bf16 or fp16 (default bf16 on CUDA, fp32 on CPU)")
      ->check(CLI::IsMember({"fp32", "bf16", "fp16"}));
  // The flag's 0 (off) is the option's -1; the option's 0 is the default.
  cmd->add_option_function<int>("--precise-bn-batches", [o](int v) { o->precise_bn_batches = v == 0 ? -1 : v; },
                  "Recompute BatchNorm statistics over N training batches before each validation "
                  "(default 20; 0 = off; off under --recipe notebook)")
      ->check(CLI::Range(0, 100000));
  cmd->add_option("--bn-momentum", o->detector.bn_momentum,
                  "BatchNorm moving-average momentum, Keras convention (Keras default 0.99)")
      ->check(CLI::Range(0.0, 0.9999));
  auto d = std::make_shared<DistributedArgs>();
  cmd->add_option("--world-size", d->world_size, "Data-parallel ranks on this machine (Gloo on loopback)")
      ->check(CLI::Range(1, 64));
  cmd->add_option("--bucket-bytes", o->bucket_bytes, "Gradient all-reduce bucket size in bytes (25 MiB)")
      ->check(CLI::Range(int64_t{1024}, int64_t{1} << 32));
  cmd->add_flag("--no-overlap", [o](int64_t) { o->overlap_allreduce = false; },
                "Start gradient all-reduces only after backward (to measure what overlap hides)");
  cmd->add_option("--rank", d->rank)->group("");  // set by the launcher
  cmd->add_option("--master-port", d->master_port)->group("");
  cmd->callback([run, o, d] { *run = [o, d] { return RunTrain(*o, *d); }; });
}

}  // namespace dfc
