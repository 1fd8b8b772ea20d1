#include "common/training_config.h"

#include <cmath>

#include <google/protobuf/unknown_field_set.h>

#include "absl/strings/ascii.h"
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

namespace {
// name <-> value tables; index = enum value, [0] = UNSPECIFIED = "".
const std::vector<std::string> kModelNames = {"", "mesoinception4", "meso4", "resnet50-vggface"};
const std::vector<std::string> kLossNames = {"", "bce", "mse"};
const std::vector<std::string> kScheduleNames = {"", "constant", "notebook"};
const std::vector<std::string> kPrecisionNames = {"", "fp32", "bf16", "fp16"};
const std::vector<std::string> kCudaGraphsNames = {"", "auto", "on", "off"};

std::string NameOf(const std::vector<std::string>& names, int v) {
  return v >= 0 && v < static_cast<int>(names.size()) ? names[static_cast<size_t>(v)] : absl::StrCat("#", v);
}

absl::StatusOr<int> ValueOf(const std::vector<std::string>& names, const std::string& name, bool empty_ok,
                            const std::string& field, const std::string& flag) {
  for (size_t i = empty_ok ? 0 : 1; i < names.size(); ++i) {
    if (names[i] == name) return static_cast<int>(i);
  }
  std::vector<std::string> known(names.begin() + 1, names.end());
  return Bad(field, flag, absl::StrCat("unknown value '", name.substr(0, 64), "' (known: ", absl::StrJoin(known, ", "), ")"));
}

template <typename Enum>
absl::StatusOr<Enum> ParseEnum(const std::vector<std::string>& names, const std::string& name, bool empty_ok,
                               const std::string& field, const std::string& flag) {
  auto v = ValueOf(names, name, empty_ok, field, flag);
  if (!v.ok()) return v.status();
  return static_cast<Enum>(*v);
}
}  // namespace

bool IsPlainName(const std::string& name) {
  if (name.empty() || name.size() > kMaxNameBytes || name[0] == '.') return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

bool IsTerminalState(v1::JobState s) { return s == v1::SUCCEEDED || s == v1::FAILED || s == v1::CANCELLED; }

std::string ModelName(v1::Model m) { return NameOf(kModelNames, m); }
std::string LossName(v1::Loss l) { return NameOf(kLossNames, l); }
std::string LrScheduleName(v1::LrSchedule s) { return NameOf(kScheduleNames, s); }
std::string PrecisionName(v1::Precision p) { return NameOf(kPrecisionNames, p); }
std::string CudaGraphsName(v1::CudaGraphs g) { return NameOf(kCudaGraphsNames, g); }

absl::StatusOr<v1::Model> ParseModel(const std::string& name) {
  return ParseEnum<v1::Model>(kModelNames, name, false, "config.model", "--model");
}
absl::StatusOr<v1::Loss> ParseLoss(const std::string& name) {
  return ParseEnum<v1::Loss>(kLossNames, name, true, "config.loss", "--loss");
}
absl::StatusOr<v1::LrSchedule> ParseLrSchedule(const std::string& name) {
  return ParseEnum<v1::LrSchedule>(kScheduleNames, name, true, "config.lr_schedule", "--lr-schedule");
}
absl::StatusOr<v1::Precision> ParsePrecision(const std::string& name) {
  return ParseEnum<v1::Precision>(kPrecisionNames, name, true, "config.precision", "--precision");
}
absl::StatusOr<v1::CudaGraphs> ParseCudaGraphs(const std::string& name) {
  return ParseEnum<v1::CudaGraphs>(kCudaGraphsNames, name, true, "config.cuda_graphs", "--cuda-graphs");
}

bool UpgradeStoredConfig(v1::TrainingConfig* c) {
  const google::protobuf::UnknownFieldSet& unknown = c->GetReflection()->GetUnknownFields(*c);
  if (unknown.empty()) return true;
  bool ok = true;
  for (int i = 0; i < unknown.field_count(); ++i) {
    const google::protobuf::UnknownField& f = unknown.field(i);
    if (f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    const std::string& name = f.length_delimited();
    switch (f.number()) {
      case 1:
        if (auto m = ParseModel(name); m.ok()) c->set_model(*m); else ok = false;
        break;
      case 7:
        if (auto l = ParseLoss(name); l.ok()) c->set_loss(*l); else ok = false;
        break;
      case 8:
        if (auto s = ParseLrSchedule(name); s.ok()) c->set_lr_schedule(*s); else ok = false;
        break;
      case 19:
        if (auto p = ParsePrecision(name); p.ok()) c->set_precision(*p); else ok = false;
        break;
      default:
        break;
    }
  }
  c->GetReflection()->MutableUnknownFields(c)->Clear();
  return ok;
}

absl::Status ValidateTrainingConfig(const v1::TrainingConfig& c) {
  absl::Status st;
  auto check = [&st](absl::Status s) {
    if (st.ok()) st = std::move(s);
  };
  check(Length(c.data(), kMaxPathBytes, "config.data", "--data"));
  check(Length(c.init(), kMaxPathBytes, "config.init", "--init"));
  if (!st.ok()) return st;
  // Enums: proto3 keeps numbers it does not know, so each is checked.
  if (c.model() == v1::MODEL_UNSPECIFIED || !v1::Model_IsValid(c.model())) {
    return Bad("config.model", "--model",
               absl::StrCat("unknown model ", c.model() == v1::MODEL_UNSPECIFIED ? "(none given)" : ModelName(c.model()),
                            " (known: ", absl::StrJoin(KnownModels(), ", "), ")"));
  }
  if (c.data().empty()) return Bad("config.data", "--data", "a shard directory is required");
  check(InRange(c.epochs(), 1, 100000, "config.epochs", "--epochs"));
  check(InRange(c.batch_size(), 1, 4096, "config.batch_size", "--batch-size"));
  check(DefaultOrIn(c.lr(), 0, 10, "config.lr", "--lr"));
  check(DefaultOrIn(c.adam_eps(), 0, 1, "config.adam_eps", "--adam-eps"));
  if (!v1::Loss_IsValid(c.loss())) {
    check(Bad("config.loss", "--loss", absl::StrCat("must be bce or mse, got ", LossName(c.loss()))));
  }
  if (!v1::LrSchedule_IsValid(c.lr_schedule())) {
    check(Bad("config.lr_schedule", "--lr-schedule",
              absl::StrCat("must be constant or notebook, got ", LrScheduleName(c.lr_schedule()))));
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
  if (!v1::Precision_IsValid(c.precision())) {
    check(Bad("config.precision", "--precision",
              absl::StrCat("must be fp32, bf16 or fp16, got ", PrecisionName(c.precision()))));
  }
  check(InRange(c.precise_bn_batches(), -1, 100000, "config.precise_bn_batches", "--precise-bn-batches"));
  if (!v1::CudaGraphs_IsValid(c.cuda_graphs())) {
    check(Bad("config.cuda_graphs", "--cuda-graphs",
              absl::StrCat("must be auto, on or off, got ", CudaGraphsName(c.cuda_graphs()))));
  } else if (c.cuda_graphs() == v1::CUDA_GRAPHS_ON && c.precision() == v1::FP16) {
    check(Bad("config.cuda_graphs", "--cuda-graphs",
              "on cannot be combined with --precision fp16: fp16's loss scaling decides on the host every step "
              "whether to skip it, which a captured step cannot (use bf16)"));
  }
  return st;
}

absl::Status ValidateSubmitRequest(const v1::SubmitJobRequest& r) {
  if (absl::Status st = ValidateTrainingConfig(r.config()); !st.ok()) return st;
  if (absl::Status st = InRange(r.world_size(), 1, 1024, "world_size", "--world-size"); !st.ok()) return st;
  if (r.config().batch_size() < r.world_size()) {
    return Bad("config.batch_size", "--batch-size",
               absl::StrCat(r.config().batch_size(), " is smaller than world_size ", r.world_size()));
  }
  if (r.config().cuda_graphs() == v1::CUDA_GRAPHS_ON && r.world_size() > 1) {
    return Bad("config.cuda_graphs", "--cuda-graphs",
               absl::StrCat("on needs world_size 1, got ", r.world_size(),
                            ": a data-parallel step all-reduces gradients and BatchNorm statistics between ranks, "
                            "which is not captured (auto runs such jobs eagerly)"));
  }
  if (absl::Status st = InRange(r.max_restarts(), 0, 100, "max_restarts", "--max-restarts"); !st.ok()) return st;
  if (absl::Status st = InRange(r.priority(), -kMaxPriority, kMaxPriority, "priority", "--priority"); !st.ok()) return st;
  return Length(r.idempotency_key(), kMaxIdempotencyKeyBytes, "idempotency_key", "--idempotency-key");
}

}  // namespace dfc
