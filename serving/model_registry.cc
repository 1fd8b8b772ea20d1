#include "serving/model_registry.h"

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/atomic_file.h"
#include "common/cpus.h"
#include "common/run_dir.h"
#include "common/sha256.h"
#include "common/weights_file.h"
#include "common/training_config.h"
#include "common/status_macros.h"
#include "models/checkpoint.h"
#include "models/inference.h"
#include "models/keras_h5.h"

namespace dfc {
namespace fs = std::filesystem;
namespace {

constexpr size_t kMaxFailedEntries = 16;

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool KnownArch(const std::string& arch) {
  const auto& names = DetectorNames();
  return std::find(names.begin(), names.end(), arch) != names.end();
}

// The epoch a job checkpoint finished, as its sidecar records it (the
// archive itself is read only by the confined converter).
absl::StatusOr<int64_t> CheckpointEpoch(const std::string& path) {
  DFC_ASSIGN_OR_RETURN(run_dir::CheckpointSummary s, run_dir::ReadSidecar(path));
  return s.epoch;
}

// Format, size and (from its sidecar, where there is one) epoch of a job's
// weights file. Nothing of the file but its first bytes is read here.
absl::StatusOr<v1::ModelInfo> Describe(const std::string& path) {
  v1::ModelInfo info;
  DFC_ASSIGN_OR_RETURN(const int64_t size, RegularFileSize(path));  // a FIFO among the ranks' files is refused
  info.set_size_bytes(size);
  info.set_format(LooksLikeHdf5(path) ? "keras-h5" : IsWeightsFile(path) ? "weights" : "checkpoint");
  if (auto epoch = CheckpointEpoch(path); epoch.ok()) info.set_epoch(*epoch);
  return info;
}

// What identifies loaded weights: architecture, file, size and modification
// time (so a rewritten best.ckpt is loaded again).
absl::StatusOr<std::string> CacheKey(const std::string& arch, const std::string& path) {
  DFC_ASSIGN_OR_RETURN(const int64_t size, RegularFileSize(path));
  std::error_code ec;
  const auto mtime = fs::last_write_time(path, ec).time_since_epoch().count();
  return absl::StrCat(arch, "|", path, "|", size, "|", mtime);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelRegistry>> ModelRegistry::Create(ModelRegistryOptions options,
                                                                     std::shared_ptr<ModelCatalog> catalog) {
  DFC_RETURN_IF_ERROR(CheckDevice(options.device));
  std::error_code ec;
  fs::create_directories(options.models_dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot create '", options.models_dir, "': ", ec.message()));
  // Leftovers of this host's uploads interrupted by a crash (other replicas
  // may be uploading into the same shared directory: only our host's files,
  // and only those of processes that are gone).
  for (fs::directory_iterator it(options.models_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path& path = it->path();
    if (path.extension() != ".upload" && path.extension() != ".convert") continue;
    int pid = 0;
    const std::string stem = path.stem().string();
    if (absl::SimpleAtoi(stem.substr(0, stem.find('-')), &pid) && pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) {
      std::error_code removed;
      fs::remove_all(path, removed);
    }
  }
  if (options.converter.command.empty()) {
    return absl::InvalidArgumentError("no weights converter is configured (ModelRegistryOptions::converter)");
  }
  const int threads = options.threads > 0 ? options.threads : UsableCpus();
  torch::set_num_threads(threads);
  return std::unique_ptr<ModelRegistry>(new ModelRegistry(std::move(options), std::move(catalog)));
}

absl::StatusOr<std::shared_ptr<ServedModel>> ModelRegistry::LoadWeights(const std::string& arch,
                                                                        const std::string& path, int64_t* epoch) {
  DFC_ASSIGN_OR_RETURN(Detector detector, LoadServedDetector(arch, path, options_.device, epoch));
  auto served = std::make_shared<ServedModel>();
  served->input_size = detector->input_size();
  served->predict = [detector, precision = options_.precision](const uint8_t* pixels,
                                                                int64_t n) -> absl::StatusOr<std::vector<float>> {
    return PredictLogits(*detector, pixels, n, precision);
  };
  return served;
}

absl::StatusOr<std::shared_ptr<ServedModel>> ModelRegistry::LoadFile(const v1::ModelInfo& info,
                                                                     const std::string& path, int64_t* epoch) {
  if (IsWeightsFile(path)) return LoadWeights(info.arch(), path, epoch);
  // A job checkpoint or a model imported before the converter existed: it
  // is converted, like an upload, and only the result is read here.
  std::error_code ec;
  const std::string work = NewWorkPath(".convert");
  if (!fs::create_directory(work, ec)) {
    return absl::InternalError(absl::StrCat("cannot create the converter's directory: ", ec.message()));
  }
  const std::string converted = work + "/weights.dfcw";
  const bool job = info.name().find(':') != std::string::npos;
  absl::Status st = Convert(info.arch(), path, converted, job ? "the job's checkpoint" : "the stored model");
  absl::StatusOr<std::shared_ptr<ServedModel>> loaded =
      st.ok() ? LoadWeights(info.arch(), converted, epoch) : absl::StatusOr<std::shared_ptr<ServedModel>>(st);
  fs::remove_all(work, ec);
  if (!loaded.ok()) {
    return absl::Status(loaded.status().code(),
                        absl::StrReplaceAll(loaded.status().message(), {{converted, "the converted weights"}}));
  }
  return loaded;
}

absl::StatusOr<std::shared_ptr<ServedModel>> ModelRegistry::Load(const v1::ModelInfo& info, const std::string& path) {
  DFC_ASSIGN_OR_RETURN(const std::string key, CacheKey(info.arch(), path));
  {
    absl::MutexLock lock(&mu_);
    bool waited = false;
    for (;;) {
      auto it = entries_.find(key);
      if (it == entries_.end()) break;
      Entry& e = it->second;
      if (e.info.state() == v1::MODEL_LOADED) {
        e.last_used = ++clock_;
        return e.model;
      }
      if (e.info.state() == v1::MODEL_FAILED) {
        // The load this stream waited for failed: that is its answer. A
        // later request tries again (the file may have been fixed).
        if (waited) return absl::InvalidArgumentError(e.info.load_error());
        break;
      }
      load_done_.Wait(&mu_);  // another stream is loading these weights
      waited = true;
    }
    Entry& e = entries_[key];
    e.info = info;
    e.info.set_state(v1::MODEL_LOADING);
    e.info.clear_load_error();
    e.path = path;
    e.model.reset();
    e.last_used = ++clock_;
  }
  // Outside the lock: other models' streams go on while this one loads.
  if (options_.before_load) options_.before_load(info.name());
  int64_t epoch = 0;
  absl::StatusOr<std::shared_ptr<ServedModel>> loaded = LoadFile(info, path, &epoch);
  absl::MutexLock lock(&mu_);
  Entry& e = entries_[key];
  if (loaded.ok()) {
    (*loaded)->key = key;
    if (e.info.epoch() == 0) e.info.set_epoch(epoch);
    e.info.set_state(v1::MODEL_LOADED);
    e.info.set_input_size((*loaded)->input_size);
    e.model = *loaded;
  } else {
    e.info.set_state(v1::MODEL_FAILED);
    // Users read it in ListModels: the weights are named, not their server path.
    e.info.set_load_error(absl::StrReplaceAll(loaded.status().message(),
                                              {{path, "the weights"}, {options_.models_dir, "the model store"}}));
  }
  EvictLocked();
  load_done_.SignalAll();
  return loaded;
}

void ModelRegistry::EvictLocked() {
  // The least recently used loaded models beyond max_loaded, and the oldest
  // failures beyond kMaxFailedEntries (loading ones are never evicted).
  for (v1::ModelState state : {v1::MODEL_LOADED, v1::MODEL_FAILED}) {
    const size_t keep = state == v1::MODEL_LOADED ? static_cast<size_t>(std::max(1, options_.max_loaded))
                                                  : kMaxFailedEntries;
    for (;;) {
      size_t count = 0;
      auto oldest = entries_.end();
      for (auto it = entries_.begin(); it != entries_.end(); ++it) {
        if (it->second.info.state() != state) continue;
        ++count;
        if (oldest == entries_.end() || it->second.last_used < oldest->second.last_used) oldest = it;
      }
      if (count <= keep) break;
      entries_.erase(oldest);
    }
  }
}

absl::StatusOr<std::pair<std::string, v1::ModelInfo>> ModelRegistry::JobCheckpoint(
    const v1::ModelRef::JobCheckpoint& ref) {
  const std::string& job_id = ref.job_id();
  if (job_id.empty()) return absl::InvalidArgumentError("model.job.job_id is empty");
  DFC_ASSIGN_OR_RETURN(v1::JobOutput job, catalog_->GetJobOutput(job_id));
  const std::string which = ref.checkpoint().empty() ? run_dir::kLatest : ref.checkpoint();
  const std::string& dir = job.output_dir();
  std::string path;
  int64_t epoch = 0;
  if (which == run_dir::kLatest || which == run_dir::kBest) {
    path = run_dir::Checkpoint(dir, which);
    std::error_code ec;  // the run directory is the ranks': a link loop there must not throw
    if (!fs::exists(path, ec)) {
      return absl::NotFoundError(absl::StrCat("job ", job_id, " has no ", which, " checkpoint yet (state ",
                                              v1::JobState_Name(job.state()), ")"));
    }
  } else if (absl::SimpleAtoi(which, &epoch) && epoch > 0) {
    // epoch-N.ckpt (weights kept after every epoch), else whichever of
    // best/latest finished epoch N by its sidecar (outputs of older versions).
    std::string kept;
    std::error_code ec;
    if (fs::exists(run_dir::EpochCheckpoint(dir, epoch), ec)) path = run_dir::EpochCheckpoint(dir, epoch);
    for (const char* name : {run_dir::kBest, run_dir::kLatest}) {
      if (!path.empty()) break;
      const std::string p = run_dir::Checkpoint(dir, name);
      auto e = CheckpointEpoch(p);
      if (!e.ok()) continue;
      absl::StrAppend(&kept, kept.empty() ? "" : ", ", name, " = epoch ", *e);
      if (*e == epoch) path = p;
    }
    if (path.empty()) {
      return absl::NotFoundError(absl::StrCat("job ", job_id, ": no checkpoint of epoch ", epoch, " is kept (",
                                              kept.empty() ? "none yet" : kept, ")"));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint '", which, "': expected latest, best or an epoch number"));
  }
  DFC_ASSIGN_OR_RETURN(v1::ModelInfo info, Describe(path));
  info.set_name(absl::StrCat(job_id, ":", which));
  info.set_arch(job.arch());
  return std::make_pair(path, info);
}

absl::StatusOr<std::pair<std::shared_ptr<ServedModel>, v1::ModelInfo>> ModelRegistry::Resolve(const v1::ModelRef& ref) {
  std::string path;
  v1::ModelInfo info;
  if (ref.has_job()) {
    DFC_ASSIGN_OR_RETURN(std::tie(path, info), JobCheckpoint(ref.job()));
  } else if (ref.source_case() == v1::ModelRef::kName) {
    DFC_ASSIGN_OR_RETURN(v1::CatalogEntry entry, catalog_->GetModel(ref.name()));
    info = entry.info();
    path = entry.weights_path();
  } else {
    return absl::InvalidArgumentError("the first message must name the model (a job checkpoint or an imported name)");
  }
  DFC_ASSIGN_OR_RETURN(std::shared_ptr<ServedModel> model, Load(info, path));
  info.set_input_size(model->input_size);
  info.set_state(v1::MODEL_LOADED);
  return std::make_pair(model, info);
}

absl::Status ModelRegistry::CheckImport(const v1::ImportModelRequest::Header& h) {
  if (!IsPlainName(h.name())) {
    return absl::InvalidArgumentError(
        absl::StrCat("name '", h.name(), "': use 1 to 64 of A-Z a-z 0-9 . _ - (not starting with '.')"));
  }
  if (!KnownArch(h.arch())) {
    return absl::InvalidArgumentError(absl::StrCat("arch '", h.arch(), "': expected one of ", absl::StrJoin(DetectorNames(), ", ")));
  }
  if (!h.sha256().empty() && !IsSha256Hex(h.sha256())) {
    return absl::InvalidArgumentError(
        absl::StrCat("sha256 '", h.sha256(), "': expected 64 lowercase hex digits (or none)"));
  }
  if (h.size_bytes() <= 0 || h.size_bytes() > options_.max_import_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("size_bytes ", h.size_bytes(), ": must be 1..",
                                                   options_.max_import_bytes));
  }
  if (!h.replace()) {
    auto existing = catalog_->GetModel(h.name());
    if (existing.ok()) {
      return absl::AlreadyExistsError(absl::StrCat("model '", h.name(), "' exists (dfc import --replace overwrites it)"));
    }
    if (existing.status().code() != absl::StatusCode::kNotFound) return existing.status();
  }
  return absl::OkStatus();
}

std::string ModelRegistry::NewUploadPath() { return NewWorkPath(".upload"); }

std::string ModelRegistry::NewWorkPath(const std::string& extension) {
  absl::MutexLock lock(&mu_);
  return (fs::path(options_.models_dir) / absl::StrCat(::getpid(), "-", ++work_paths_, extension)).string();
}

absl::Status ModelRegistry::Convert(const std::string& arch, const std::string& input, const std::string& out,
                                    const std::string& subject) {
  {
    absl::MutexLock lock(&convert_mu_);
    while (converting_ >= std::max(1, options_.max_converting)) convert_done_.Wait(&convert_mu_);
    ++converting_;
  }
  std::string sandbox;
  absl::Status st = ConvertWeights(options_.converter, arch, input, out, subject, &sandbox);
  absl::MutexLock lock(&convert_mu_);
  --converting_;
  convert_done_.Signal();
  if (!sandbox.empty() && sandbox != sandbox_) {
    sandbox_ = sandbox;
    std::fprintf(stderr, "dfc-server: weights it did not write are converted in a confined process (%s)\n",
                 sandbox.c_str());
  }
  return st;
}

absl::StatusOr<v1::ModelInfo> ModelRegistry::Import(const v1::ImportModelRequest::Header& h,
                                                    const std::string& uploaded, const std::string& sha256) {
  // Errors go to the client: they name "the uploaded file", never a path on
  // the server.
  std::string stored;
  std::string work;       // the converter's directory
  std::string converted;  // what it writes there
  auto cleanup = [&] {
    std::error_code ec;
    fs::remove(uploaded, ec);
    if (!work.empty()) fs::remove_all(work, ec);
  };
  auto fail = [&](absl::Status st) {
    cleanup();
    std::error_code ec;
    if (!stored.empty()) fs::remove(stored, ec);
    return absl::Status(st.code(), absl::StrReplaceAll(st.message(), {{converted, "the converted weights"},
                                                                      {uploaded, "the uploaded file"},
                                                                      {stored, "the stored model"},
                                                                      {options_.models_dir, "the model store"}}));
  };
  // Checked again: the name may have been taken while the bytes arrived.
  if (absl::Status st = CheckImport(h); !st.ok()) return fail(st);
  v1::ModelInfo info;
  std::error_code ec;
  info.set_size_bytes(static_cast<int64_t>(fs::file_size(uploaded, ec)));
  info.set_sha256(sha256);
  info.set_format(LooksLikeHdf5(uploaded) ? "keras-h5" : "checkpoint");  // its first 8 bytes
  work = fs::path(uploaded).replace_extension(".convert").string();
  if (!fs::create_directory(work, ec)) {
    return fail(absl::InternalError(absl::StrCat("cannot create the converter's directory: ", ec.message())));
  }
  converted = work + "/weights.dfcw";
  if (absl::Status st = Convert(h.arch(), uploaded, converted, "the uploaded file"); !st.ok()) return fail(st);
  // From here on only the converter's output is read, and only as a
  // served-weights file (common/weights_file.h), never by an archive or HDF5
  // parser: a converter taken over by its input can hand over nothing else.
  int64_t epoch = 0;
  auto model = LoadWeights(h.arch(), converted, &epoch);  // outside the lock
  if (!model.ok()) {
    return fail(absl::InternalError(absl::StrCat("the converted weights do not load: ", model.status().message())));
  }
  if (info.format() == "checkpoint") info.set_epoch(epoch);
  info.set_name(h.name());
  info.set_arch(h.arch());
  info.set_created_unix_ms(NowMs());
  info.set_input_size((*model)->input_size);
  // A file of its own (never overwritten): replicas that loaded the old
  // weights keep serving them until they ask the catalogue again.
  stored = (fs::path(options_.models_dir) /
            absl::StrCat(h.name(), ".", info.created_unix_ms(), "-", ::getpid(), ".weights")).string();
  fs::rename(converted, stored, ec);
  if (ec) return fail(absl::InternalError(absl::StrCat("cannot store the model: ", ec.message())));
  cleanup();
  v1::RegisterModelRequest reg;
  *reg.mutable_entry()->mutable_info() = info;
  reg.mutable_entry()->set_weights_path(stored);
  reg.set_replace(h.replace());
  auto registered = catalog_->RegisterModel(reg);
  if (!registered.ok()) return fail(registered.status());
  const std::string replaced = registered->replaced_path();
  if (!replaced.empty() && replaced != stored && fs::path(replaced).parent_path() == fs::path(stored).parent_path()) {
    fs::remove(replaced, ec);  // best effort: a replica mid-load of it fails that one stream
  }
  // The model stays loaded under its stored file (a rename keeps size and
  // mtime), so the first Evaluate of it here does not load it again.
  if (auto key = CacheKey(h.arch(), stored); key.ok()) {
    absl::MutexLock lock(&mu_);
    (*model)->key = *key;
    Entry& e = entries_[*key];
    e.info = info;
    e.info.set_state(v1::MODEL_LOADED);
    e.path = stored;
    e.model = *model;
    e.last_used = ++clock_;
    EvictLocked();
  }
  return info;
}

int ModelRegistry::LoadedCount() {
  absl::MutexLock lock(&mu_);
  int n = 0;
  for (const auto& [key, e] : entries_) n += e.model != nullptr;
  return n;
}

absl::StatusOr<std::vector<v1::ModelInfo>> ModelRegistry::List() {
  DFC_ASSIGN_OR_RETURN(std::vector<v1::CatalogEntry> catalog, catalog_->ListModels());
  absl::MutexLock lock(&mu_);
  std::map<std::string, const Entry*> by_path;  // the most recently used entry of each file
  for (const auto& [key, e] : entries_) {
    auto& slot = by_path[e.path];
    if (slot == nullptr || slot->last_used < e.last_used) slot = &e;
  }
  std::vector<v1::ModelInfo> out;
  for (const v1::CatalogEntry& c : catalog) {
    out.push_back(c.info());
    auto it = by_path.find(c.weights_path());
    if (it != by_path.end()) {
      out.back().set_state(it->second->info.state());
      out.back().set_load_error(it->second->info.load_error());
      if (it->second->model) out.back().set_input_size(it->second->model->input_size);
    }
  }
  for (const auto& [key, e] : entries_) {
    if (e.info.name().find(':') != std::string::npos) out.push_back(e.info);  // JOB:CHECKPOINT
  }
  return out;
}

}  // namespace dfc
