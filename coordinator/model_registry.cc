#include "coordinator/model_registry.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "worker/checkpoint.h"
#include "worker/inference.h"
#include "worker/keras_h5.h"

namespace dfc {
namespace fs = std::filesystem;
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > 64 || name[0] == '.') return false;
  for (char c : name) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') return false;
  }
  return true;
}

bool KnownArch(const std::string& arch) {
  const auto& names = DetectorNames();
  return std::find(names.begin(), names.end(), arch) != names.end();
}

// Format, epoch and size of a weights file.
absl::StatusOr<v1::ModelInfo> Describe(const std::string& path) {
  v1::ModelInfo info;
  std::error_code ec;
  info.set_size_bytes(static_cast<int64_t>(fs::file_size(path, ec)));
  if (ec) return absl::NotFoundError(absl::StrCat("'", path, "': ", ec.message()));
  if (LooksLikeHdf5(path)) {
    info.set_format("keras-h5");
  } else {
    DFC_ASSIGN_OR_RETURN(CheckpointMeta meta, ReadCheckpointMeta(path));
    info.set_format("checkpoint");
    info.set_epoch(meta.epoch);
    info.set_arch(meta.arch);
  }
  return info;
}

// What identifies loaded weights: architecture, file, size and modification
// time (so a rewritten best.ckpt is loaded again).
absl::StatusOr<std::string> CacheKey(const std::string& arch, const std::string& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("'", path, "': ", ec.message()));
  const auto mtime = fs::last_write_time(path, ec).time_since_epoch().count();
  return absl::StrCat(arch, "|", path, "|", size, "|", mtime);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Create(ModelRegistryOptions options, JobStore* store,
                                                                     JobLookup jobs) {
  std::error_code ec;
  fs::create_directories(options.models_dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot create '", options.models_dir, "': ", ec.message()));
  // Leftovers of uploads interrupted by a crash.
  for (const auto& e : fs::directory_iterator(options.models_dir, ec)) {
    if (e.path().extension() == ".upload") fs::remove(e.path(), ec);
  }
  const int threads = options.threads > 0 ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  torch::set_num_threads(threads);
  return std::unique_ptr<ModelRegistry>(new ModelRegistry(std::move(options), store, std::move(jobs)));
}

absl::StatusOr<std::shared_ptr<ServedModel>> ModelRegistry::Load(const std::string& arch, const std::string& path) {
  DFC_ASSIGN_OR_RETURN(const std::string key, CacheKey(arch, path));
  for (auto it = loaded_.begin(); it != loaded_.end(); ++it) {
    if ((*it)->key == key) {
      loaded_.splice(loaded_.begin(), loaded_, it);
      return loaded_.front();
    }
  }
  DFC_ASSIGN_OR_RETURN(Detector detector, LoadDetector(arch, path));
  auto served = std::make_shared<ServedModel>();
  served->key = key;
  served->input_size = detector->input_size();
  served->predict = [detector](const uint8_t* pixels, int64_t n) -> absl::StatusOr<std::vector<float>> {
    return PredictLogits(*detector, pixels, n);
  };
  loaded_.push_front(served);
  while (static_cast<int>(loaded_.size()) > std::max(1, options_.max_loaded)) loaded_.pop_back();
  return served;
}

absl::StatusOr<std::pair<std::shared_ptr<ServedModel>, v1::ModelInfo>> ModelRegistry::Resolve(const v1::ModelRef& ref) {
  std::string arch, path;
  v1::ModelInfo info;
  if (ref.has_job()) {
    const std::string& job_id = ref.job().job_id();
    if (job_id.empty()) return absl::InvalidArgumentError("model.job.job_id is empty");
    DFC_ASSIGN_OR_RETURN(v1::Job job, jobs_(job_id));
    arch = job.config().model();
    const std::string which = ref.job().checkpoint().empty() ? "latest" : ref.job().checkpoint();
    const fs::path dir = job.output_dir();
    int64_t epoch = 0;
    if (which == "latest" || which == "best") {
      path = (dir / (which + ".ckpt")).string();
      if (!fs::exists(path)) {
        return absl::NotFoundError(absl::StrCat("job ", job_id, " has no ", which, " checkpoint yet (state ",
                                                v1::JobState_Name(job.state()), ")"));
      }
    } else if (absl::SimpleAtoi(which, &epoch) && epoch > 0) {
      // epoch-N.ckpt (weights kept after every epoch), else whichever of
      // best/latest finished epoch N (outputs of older versions).
      std::string kept;
      for (const std::string& name : {absl::StrCat("epoch-", epoch), std::string("best"), std::string("latest")}) {
        const std::string p = (dir / (name + ".ckpt")).string();
        auto meta = ReadCheckpointMeta(p);
        if (!meta.ok()) continue;
        absl::StrAppend(&kept, kept.empty() ? "" : ", ", name, " = epoch ", meta->epoch);
        if (meta->epoch == epoch && path.empty()) path = p;
      }
      if (path.empty()) {
        return absl::NotFoundError(absl::StrCat("job ", job_id, ": no checkpoint of epoch ", epoch,
                                                " is kept (", kept.empty() ? "none yet" : kept, ")"));
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("checkpoint '", which, "': expected latest, best or an epoch number"));
    }
    DFC_ASSIGN_OR_RETURN(info, Describe(path));
    info.set_name(absl::StrCat(job_id, ":", which));
    info.set_arch(arch);
  } else if (ref.source_case() == v1::ModelRef::kName) {
    DFC_ASSIGN_OR_RETURN(info, store_->GetModel(ref.name()));
    arch = info.arch();
    path = (fs::path(options_.models_dir) / (info.name() + ".weights")).string();
  } else {
    return absl::InvalidArgumentError("the first message must name the model (a job checkpoint or an imported name)");
  }
  std::lock_guard<std::mutex> lock(mu_);
  DFC_ASSIGN_OR_RETURN(std::shared_ptr<ServedModel> model, Load(arch, path));
  info.set_input_size(model->input_size);
  return std::make_pair(model, info);
}

absl::Status ModelRegistry::CheckImport(const v1::ImportModelRequest::Header& h) {
  if (!ValidName(h.name())) {
    return absl::InvalidArgumentError(
        absl::StrCat("name '", h.name(), "': use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with '.')"));
  }
  if (!KnownArch(h.arch())) {
    return absl::InvalidArgumentError(absl::StrCat("arch '", h.arch(), "': expected one of ", absl::StrJoin(DetectorNames(), ", ")));
  }
  if (h.size_bytes() <= 0 || h.size_bytes() > options_.max_import_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("size_bytes ", h.size_bytes(), ": must be 1..",
                                                   options_.max_import_bytes));
  }
  if (!h.replace() && store_->GetModel(h.name()).ok()) {
    return absl::AlreadyExistsError(absl::StrCat("model '", h.name(), "' exists (import with replace to overwrite)"));
  }
  return absl::OkStatus();
}

std::string ModelRegistry::NewUploadPath() {
  std::lock_guard<std::mutex> lock(mu_);
  return (fs::path(options_.models_dir) / absl::StrCat(::getpid(), "-", ++uploads_, ".upload")).string();
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::Import(const v1::ImportModelRequest::Header& h,
                                                    const std::string& uploaded) {
  // Errors go to the client: they name "the uploaded file", never a path on
  // the server.
  auto fail = [&](absl::Status st) {
    std::error_code ec;
    fs::remove(uploaded, ec);
    return absl::Status(st.code(), absl::StrReplaceAll(st.message(), {{uploaded, "the uploaded file"},
                                                                      {options_.models_dir, "the model store"}}));
  };
  // Checked again: the name may have been taken while the bytes arrived.
  if (absl::Status st = CheckImport(h); !st.ok()) return fail(st);
  auto info = Describe(uploaded);
  if (!info.ok()) return fail(absl::InvalidArgumentError(absl::StrCat("weights: ", info.status().message())));
  if (info->format() == "checkpoint" && info->arch() != h.arch()) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("weights: the checkpoint is a ", info->arch(), ", not a ", h.arch())));
  }
  std::shared_ptr<ServedModel> model;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto loaded = Load(h.arch(), uploaded);
    if (!loaded.ok()) {
      return fail(absl::InvalidArgumentError(absl::StrCat("weights do not load as ", h.arch(), ": ",
                                                          loaded.status().message())));
    }
    model = *loaded;
  }
  info->set_name(h.name());
  info->set_arch(h.arch());
  info->set_created_unix_ms(NowMs());
  info->set_input_size(model->input_size);
  const std::string final_path = (fs::path(options_.models_dir) / (h.name() + ".weights")).string();
  std::error_code ec;
  fs::rename(uploaded, final_path, ec);
  absl::StatusOr<std::string> key = ec ? absl::InternalError(absl::StrCat("cannot store the model: ", ec.message()))
                                       : CacheKey(h.arch(), final_path);
  {
    // The model stays loaded under its final file (a rename keeps size and
    // mtime), so the first Evaluate of it does not load it again.
    std::lock_guard<std::mutex> lock(mu_);
    if (key.ok()) model->key = *key;
    else loaded_.remove(model);
  }
  if (!key.ok()) return fail(key.status());
  DFC_RETURN_IF_ERROR(store_->PutModel(*info));
  return *info;
}

absl::StatusOr<std::vector<v1::ModelInfo>> ModelRegistry::List() { return store_->ListModels(); }

}  // namespace dfc
