#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "clients/commands.h"
#include "clients/training_flags.h"
#include "common/progress.h"
#include "common/run_dir.h"
#include "common/stop_signal.h"
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
  void OnEpochStart(const std::string& phase, int epoch, int max_epochs, int64_t steps) override {
    prefix_ = phase.empty() ? "" : phase + " ";
    bar_ = std::make_unique<ProgressBar>(prefix_ + "epoch " + std::to_string(epoch) + "/" + std::to_string(max_epochs),
                                         steps);
    max_epochs_ = max_epochs;
  }
  void OnStep(int, int64_t step, int64_t, double loss, double acc) override {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "loss %.4f acc %.4f", loss, acc);
    if (bar_) bar_->Update(step, buf);
  }
  void OnEpoch(const EpochMetrics& m) override {
    if (bar_) bar_->Finish();
    std::printf("%sepoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  val_auc %.4f  %.1f img/s  "
                "data-wait %.1f%%  lr %.3g  %s\n",
                prefix_.c_str(), m.epoch, max_epochs_, m.loss, m.accuracy, m.val_loss, m.val_accuracy, m.val_auc,
                m.images_per_second, 100 * m.data_wait_share, m.lr, FormatDuration(m.seconds).c_str());
    std::fflush(stdout);
  }

 private:
  std::unique_ptr<ProgressBar> bar_;
  std::string prefix_;  // "selection " in the notebook recipe's first phase
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
    // Rank 0 takes the run directory's lock; a run already there is named
    // once here rather than by a rank among its peers' errors.
    std::error_code ec;
    if (std::filesystem::is_directory(o.out_dir, ec)) {
      std::string note;
      auto lock = run_dir::LockForWriting(o.out_dir, /*shared=*/false, "dfc train", &note);
      if (!lock.ok()) return ReportError(lock.status());
      if (*lock >= 0) ::close(*lock);
    }
    CatchStopSignals({SIGINT, SIGTERM}, "dfc");  // passed on to the ranks, which save their step
    absl::Status st = LaunchRanks(lo);
    if (st.code() == absl::StatusCode::kCancelled) {
      std::fprintf(stderr, "dfc: %s\n", std::string(st.message()).c_str());
      return 128 + StopSignal();
    }
    if (!st.ok()) return ReportError(st);
    return kExitOk;
  }
  std::unique_ptr<Collective> collective;
  if (d.world_size > 1) {
    CollectiveOptions co;
    co.rank = d.rank;
    co.world_size = d.world_size;
    co.store_port = d.master_port;
    co.rendezvous_key = RendezvousKeyFromEnvironment();
    auto c = Collective::Connect(co);
    if (!c.ok()) return ReportError(c.status());
    collective = std::move(*c);
    o.collective = collective.get();
  }
  ConsoleObserver obs;
  const bool talk = d.rank <= 0;
  // Ctrl-C (or SIGTERM, or the launcher's): stop after the step in progress,
  // saved to OUT/interrupted.ckpt for --resume.
  CatchStopSignals({SIGINT, SIGTERM}, d.rank < 0 ? "dfc" : "dfc rank " + std::to_string(d.rank));
  o.stop_requested = [] { return StopSignal() != 0; };
  if (d.rank >= 0) o.run_holder = absl::StrCat("rank 0 of a dfc train --world-size ", d.world_size);
  auto result = RunTraining(o, talk ? &obs : nullptr);
  if (result.status().code() == absl::StatusCode::kCancelled && StopSignal() != 0) {
    if (talk) {
      std::fprintf(stderr, "dfc: stopped by %s: %s\n", StopSignalName(),
                   std::string(result.status().message()).c_str());
    }
    return 128 + StopSignal();
  }
  if (!result.ok()) return ReportError(result.status());
  if (talk) std::printf("%s\n", result->ToJson().c_str());
  return kExitOk;
}

}  // namespace

void AddTrainCommand(CLI::App& app, RunFn* run) {
  CLI::App* cmd = app.add_subcommand("train", kTrainAbout);
  // The flags `dfc submit` has (one set, one TrainingConfig), then those of a
  // local run only.
  auto config = std::make_shared<v1::TrainingConfig>();
  AddTrainingFlags(cmd, config.get());
  auto o = std::make_shared<TrainOptions>();  // the local-only fields
  cmd->add_option("--out", o->out_dir, "Output directory for checkpoints and metrics.jsonl")->required();
  cmd->add_flag("--resume", o->resume,
                "Continue from OUT/latest.ckpt, or from OUT/interrupted.ckpt where a stop (Ctrl-C, SIGTERM) saved a "
                "step after it (--recipe notebook: in the phase that was interrupted)");
  cmd->add_option("--loader-threads", o->loader_threads,
                  "Decode threads (0 = of this rank's share of the usable CPUs: half on CPU, all but one on a GPU)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--freeze-keras-layers", o->detector.freeze_keras_layers,
                  "ResNet: freeze non-BatchNorm layers among the first N Keras layers")
      ->check(CLI::Range(0, 100000));
  auto d = std::make_shared<DistributedArgs>();
  cmd->add_option("--world-size", d->world_size, "Data-parallel ranks on this machine (Gloo on loopback)")
      ->check(CLI::Range(1, 64));
  cmd->add_option("--bucket-bytes", o->bucket_bytes, "Gradient all-reduce bucket size in bytes (25 MiB)")
      ->check(CLI::Range(int64_t{1024}, int64_t{1} << 32));
  cmd->add_flag("--no-overlap", [o](int64_t) { o->overlap_allreduce = false; },
                "Start gradient all-reduces only after backward (to measure what overlap hides)");
  cmd->add_option("--rank", d->rank)->group("");  // set by the launcher
  cmd->add_option("--master-port", d->master_port)->group("");
  cmd->callback([run, config, o, d] {
    *run = [config, o, d] {
      TrainOptions t = TrainOptionsFromConfig(*config);
      t.out_dir = o->out_dir;
      t.resume = o->resume;
      t.loader_threads = o->loader_threads;
      t.detector.freeze_keras_layers = o->detector.freeze_keras_layers;
      t.bucket_bytes = o->bucket_bytes;
      t.overlap_allreduce = o->overlap_allreduce;
      return RunTrain(std::move(t), *d);
    };
  });
}

}  // namespace dfc
