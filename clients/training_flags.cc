#include "clients/training_flags.h"

#include <string>
#include <vector>

#include "common/training_config.h"

namespace dfc {
namespace {

// A flag check from the configuration's parser: its error names the field
// and flag, as the validator's do ("config.model (--model): unknown value ...").
template <typename Parse>
CLI::Validator Checked(Parse parse) {
  return CLI::Validator(
      [parse](std::string& v) {
        auto parsed = parse(v);
        return parsed.ok() ? std::string() : std::string(parsed.status().message());
      },
      "NAME");
}

}  // namespace

void AddTrainingFlags(CLI::App* cmd, v1::TrainingConfig* c) {
  // Ranges are left to the validator (ValidateTrainingConfig, run by `dfc
  // train`, the coordinator and every rank), whose errors name the field:
  // "config.batch_size (--batch-size): must be in [1, 4096], got 100000".
  // TrainOptions' defaults (training/trainer.h), so train and submit agree.
  c->set_model(v1::MESOINCEPTION4);
  c->set_epochs(10);
  c->set_batch_size(32);
  c->set_seed(1);
  cmd->add_option_function<std::string>("--model", [c](const std::string& v) { c->set_model(*ParseModel(v)); },
                                        "mesoinception4 (default), meso4 or resnet50-vggface")
      ->check(Checked(ParseModel));
  cmd->add_option_function<std::string>("--data", [c](const std::string& v) { c->set_data(v); },
                                        "Shard directory (from `dfc shard`)")
      ->required();
  cmd->add_option_function<int>("--epochs", [c](int v) { c->set_epochs(v); }, "Maximum epochs (10)");
  cmd->add_option_function<int>("--batch-size", [c](int v) { c->set_batch_size(v); },
                                "Global batch, split between ranks (32)");
  cmd->add_option_function<double>("--lr", [c](double v) { c->set_lr(v); },
                                   "Adam learning rate (default: 1e-3 MesoNet, 1e-5 ResNet)");
  cmd->add_option_function<double>("--adam-eps", [c](double v) { c->set_adam_eps(v); },
                                   "Adam epsilon (default: 1e-7 MesoNet, 1e-9 ResNet)");
  cmd->add_option_function<std::string>("--loss", [c](const std::string& v) { c->set_loss(*ParseLoss(v)); },
                                        "bce or mse")
      ->check(Checked(ParseLoss));
  cmd->add_option_function<std::string>("--lr-schedule",
                                        [c](const std::string& v) { c->set_lr_schedule(*ParseLrSchedule(v)); },
                                        "constant or notebook (x e^-0.2 per epoch after 2)")
      ->check(Checked(ParseLrSchedule));
  cmd->add_option_function<int>("--early-stopping-patience", [c](int v) { c->set_early_stopping_patience(v); },
                                "Epochs without val accuracy gain (0 = off)");
  cmd->add_option_function<std::string>("--init", [c](const std::string& v) { c->set_init(v); },
                                        "Start from Keras .h5 weights or a DFC checkpoint");
  cmd->add_option_function<uint64_t>("--seed", [c](uint64_t v) { c->set_seed(v); },
                                     "Random seed (init, shuffle, dropout)");
  cmd->add_option_function<double>("--bn-momentum", [c](double v) { c->set_bn_momentum(v); },
                                   "BatchNorm moving-average momentum, Keras convention (Keras default 0.99)");
  cmd->add_option_function<int64_t>("--max-train-images", [c](int64_t v) { c->set_max_train_images(v); },
                                    "Train on a deterministic subset (0 = all)");
  cmd->add_option_function<int64_t>("--max-val-images", [c](int64_t v) { c->set_max_val_images(v); },
                                    "Validate on a deterministic subset (0 = all)");
  cmd->add_option_function<int>("--threads", [c](int v) { c->set_threads_per_rank(v); },
                                "Intra-op threads per rank (0 = the rank's share of the CPUs its worker may use)");
  cmd->add_option_function<std::string>("--precision",
                                        [c](const std::string& v) { c->set_precision(*ParsePrecision(v)); },
                                        "Forward-pass precision: fp32, bf16 or fp16 (default bf16 on CUDA, fp32 on CPU)")
      ->check(Checked(ParsePrecision));
  cmd->add_option_function<std::string>("--cuda-graphs",
                                        [c](const std::string& v) { c->set_cuda_graphs(*ParseCudaGraphs(v)); },
                                        "Capture the training step as a CUDA graph: auto (on a CUDA rank of a "
                                        "one-rank job, not fp16), on (required) or off")
      ->check(Checked(ParseCudaGraphs));
  cmd->add_option_function<std::string>("--recipe", [c](const std::string& v) { c->set_recipe(v); },
                                        "notebook: the seed notebook's whole recipe (explicit flags win)")
      ->check(CLI::IsMember({"notebook"}));
  // The flag's 0 (off) is the configuration's -1; the configuration's 0 is the default.
  cmd->add_option_function<int>("--precise-bn-batches", [c](int v) { c->set_precise_bn_batches(v == 0 ? -1 : v); },
                                "Recompute BatchNorm statistics over N training batches before each validation "
                                "(default 20; 0 = off; off under --recipe notebook)");
}

}  // namespace dfc
