#include "common/training_config.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dfc {
namespace {

absl::Status Bad(const std::string& field, const std::string& flag, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat(field, " (", flag, "): ", why));
}

// A number that is 0 (the model's default) or finite within (lo, hi].
absl::Status DefaultOrIn(double v, double lo, double hi, const std::string& field, const std::string& flag) {
  if (v == 0) return absl::OkStatus();
  if (!std::isfinite(v) || v <= lo || v > hi) {
    return Bad(field, flag, absl::StrCat("must be 0 (the model's default) or finite and in (", lo, ", ", hi, "], got ", v));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status InRange(T v, T lo, T hi, const std::string& field, const std::string& flag) {
  if (v < lo || v > hi) return Bad(field, flag, absl::StrCat("must be in [", lo, ", ", hi, "], got ", v));
  return absl::OkStatus();
}

absl::Status Length(const std::string& v, size_t max, const std::string& field, const std::string& flag) {
  if (v.size() > max) return Bad(field, flag, absl::StrCat("longer than ", max, " bytes (", v.size(), ")"));
  return absl::OkStatus();
}

}  // namespace

const std::vector<std::string>& KnownModels() {
  static const std::vector<std::string> kModels = {"mesoinception4", "meso4", "resnet50-vggface"};
  return kModels;
}

absl::Status ValidateTrainingConfig(const v1::TrainingConfig& c) {
  absl::Status st;
  auto check = [&st](absl::Status s) {
    if (st.ok()) st = std::move(s);
  };
  check(Length(c.model(), kMaxNameBytes, "config.model", "--model"));
  check(Length(c.data(), kMaxPathBytes, "config.data", "--data"));
  check(Length(c.init(), kMaxPathBytes, "config.init", "--init"));
  check(Length(c.loss(), kMaxNameBytes, "config.loss", "--loss"));
  check(Length(c.lr_schedule(), kMaxNameBytes, "config.lr_schedule", "--lr-schedule"));
  if (!st.ok()) return st;
  const auto& models = KnownModels();
  if (std::find(models.begin(), models.end(), c.model()) == models.end()) {
    return Bad("config.model", "--model",
               absl::StrCat("unknown model '", c.model(), "' (known: ", absl::StrJoin(models, ", "), ")"));
  }
  if (c.data().empty()) return Bad("config.data", "--data", "a shard directory is required");
  check(InRange(c.epochs(), 1, 100000, "config.epochs", "--epochs"));
  check(InRange(c.batch_size(), 1, 4096, "config.batch_size", "--batch-size"));
  check(DefaultOrIn(c.lr(), 0, 10, "config.lr", "--lr"));
  check(DefaultOrIn(c.adam_eps(), 0, 1, "config.adam_eps", "--adam-eps"));
  if (!c.loss().empty() && c.loss() != "bce" && c.loss() != "mse") {
    check(Bad("config.loss", "--loss", absl::StrCat("must be bce or mse, got '", c.loss(), "'")));
  }
  if (!c.lr_schedule().empty() && c.lr_schedule() != "constant" && c.lr_schedule() != "notebook") {
    check(Bad("config.lr_schedule", "--lr-schedule",
              absl::StrCat("must be constant or notebook, got '", c.lr_schedule(), "'")));
  }
  check(InRange(c.early_stopping_patience(), 0, 100000, "config.early_stopping_patience", "--early-stopping-patience"));
  // Keras convention: the moving average keeps `momentum` of the old value.
  if (c.bn_momentum() != 0 && (!std::isfinite(c.bn_momentum()) || c.bn_momentum() < 0 || c.bn_momentum() >= 1)) {
    check(Bad("config.bn_momentum", "--bn-momentum",
              absl::StrCat("must be 0 (Keras's 0.99) or in [0, 1), got ", c.bn_momentum())));
  }
  check(InRange<int64_t>(c.max_train_images(), 0, int64_t{1} << 40, "config.max_train_images", "--max-train-images"));
  check(InRange<int64_t>(c.max_val_images(), 0, int64_t{1} << 40, "config.max_val_images", "--max-val-images"));
  check(InRange(c.threads_per_rank(), 0, 1024, "config.threads_per_rank", "--threads"));
  check(InRange(c.hang_timeout_s(), 0, 86400, "config.hang_timeout_s", "--hang-timeout"));
  if (!c.recipe().empty() && c.recipe() != "notebook") {
    check(Bad("config.recipe", "--recipe", absl::StrCat("must be notebook or empty, got '", c.recipe().substr(0, 64), "'")));
  }
  if (!c.precision().empty() && c.precision() != "fp32" && c.precision() != "bf16" && c.precision() != "fp16") {
    check(Bad("config.precision", "--precision",
              absl::StrCat("must be fp32, bf16 or fp16, got '", c.precision().substr(0, 64), "'")));
  }
  check(InRange(c.precise_bn_batches(), -1, 100000, "config.precise_bn_batches", "--precise-bn-batches"));
  return st;
}

absl::Status ValidateSubmitRequest(const v1::SubmitJobRequest& r) {
  if (absl::Status st = ValidateTrainingConfig(r.config()); !st.ok()) return st;
  if (absl::Status st = InRange(r.world_size(), 1, 1024, "world_size", "--world-size"); !st.ok()) return st;
  if (r.config().batch_size() < r.world_size()) {
    return Bad("config.batch_size", "--batch-size",
               absl::StrCat(r.config().batch_size(), " is smaller than world_size ", r.world_size()));
  }
  if (absl::Status st = InRange(r.max_restarts(), 0, 100, "max_restarts", "--max-restarts"); !st.ok()) return st;
  if (absl::Status st = InRange(r.priority(), -kMaxPriority, kMaxPriority, "priority", "--priority"); !st.ok()) return st;
  return Length(r.idempotency_key(), kMaxIdempotencyKeyBytes, "idempotency_key", "--idempotency-key");
}

}  // namespace dfc
