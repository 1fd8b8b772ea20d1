#include "models/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>

#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "common/run_dir.h"
#include "common/status_macros.h"
#include "common/weights_file.h"
#include "models/keras_h5.h"

namespace dfc {
namespace {

constexpr int64_t kFormatVersion = 1;

torch::Tensor StringTensor(const std::string& s) {
  return torch::from_blob(const_cast<char*>(s.data()), {static_cast<int64_t>(s.size())}, torch::kUInt8).clone();
}

std::string TensorString(const torch::Tensor& t) {
  torch::Tensor c = t.contiguous();
  return std::string(reinterpret_cast<const char*>(c.data_ptr<uint8_t>()), static_cast<size_t>(c.numel()));
}

void WriteMeta(torch::serialize::OutputArchive& a, const CheckpointMeta& m) {
  a.write("dfc/version", torch::tensor(kFormatVersion));
  a.write("dfc/arch", StringTensor(m.arch));
  a.write("dfc/epoch", torch::tensor(m.epoch));
  a.write("dfc/step", torch::tensor(m.step));
  a.write("dfc/lr", torch::tensor(m.lr, torch::kFloat64));
  a.write("dfc/metrics", StringTensor(m.metrics_json));
  a.write("dfc/options", StringTensor(m.options_json));
  if (!m.epoch_progress_json.empty()) a.write("dfc/epoch_progress", StringTensor(m.epoch_progress_json));
}

absl::StatusOr<CheckpointMeta> ReadMeta(torch::serialize::InputArchive& a, const std::string& path) {
  // A fresh tensor per key: InputArchive::read() set_()s into a defined one.
  auto get = [&](const char* key) {
    torch::Tensor t;
    a.read(key, t);
    return t;
  };
  torch::Tensor version;
  if (!a.try_read("dfc/version", version)) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is not a DFC checkpoint: it is a LibTorch archive "
                                                   "without DFC's metadata (a TorchScript module?)"));
  }
  if (version.item<int64_t>() != kFormatVersion) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is a DFC checkpoint of format version ",
                                                   version.item<int64_t>(), "; this DFC reads version ",
                                                   kFormatVersion));
  }
  CheckpointMeta m;
  m.arch = TensorString(get("dfc/arch"));
  m.epoch = get("dfc/epoch").item<int64_t>();
  m.step = get("dfc/step").item<int64_t>();
  m.lr = get("dfc/lr").item<double>();
  m.metrics_json = TensorString(get("dfc/metrics"));
  m.options_json = TensorString(get("dfc/options"));
  if (torch::Tensor progress; a.try_read("dfc/epoch_progress", progress)) {
    m.epoch_progress_json = TensorString(progress);
  }
  return m;
}

// What a file LibTorch's archive reader refused seems to be, for its error:
// the usual mistakes are a Python torch.save file, a Keras 3 archive and a
// file cut short. (A DFC checkpoint is a zip archive, as those two are.)
std::string WhatTheFileIs(std::string_view b, const char* reader_error) {
  if (b.empty()) return "the file is empty";
  const bool zip = b.substr(0, 4) == std::string_view("PK\x03\x04", 4);
  if (!zip) {
    // A pickle starts with PROTO (0x80) and its version: torch.save's
    // format before PyTorch 1.6, or pickle.dump.
    if (b.size() >= 2 && static_cast<uint8_t>(b[0]) == 0x80 && b[1] >= 2 && b[1] <= 5) {
      return "it is a Python pickle (torch.save's format before PyTorch 1.6?), which DFC does not read";
    }
    return absl::StrCat("it is none of the formats DFC reads (a DFC checkpoint, Keras HDF5 weights or served "
                        "weights): it begins with bytes ",
                        absl::BytesToHexString(std::string(b.substr(0, 8))));
  }
  // The end-of-central-directory record is in the last 64 KiB + 22 bytes.
  const size_t tail = std::min<size_t>(b.size(), 65536 + 22);
  if (b.substr(b.size() - tail).find(std::string_view("PK\x05\x06", 4)) == std::string_view::npos) {
    return absl::StrCat("it is a zip archive cut short (", b.size(),
                        " bytes, without the archive's end): a copy or save that did not finish?");
  }
  // Entry names are stored in the clear in each entry's header.
  auto has = [&](std::string_view name) { return b.find(name) != std::string_view::npos; };
  if (has("model.weights.h5") && has("config.json")) {
    return "it is a Keras 3 .keras archive; DFC reads Keras weights in the HDF5 layout, which Keras 3 writes "
           "with model.save('model.h5')";
  }
  if (has("data.pkl") && !has("constants.pkl")) {
    return "it is a Python torch.save file (a pickled object such as a state_dict), which DFC does not read";
  }
  return absl::StrCat("it is a zip archive LibTorch cannot read: ", reader_error);
}

absl::Status LoadArchive(const std::string& path, torch::serialize::InputArchive* archive) {
  auto bytes = ReadFile(path);
  if (!bytes.ok()) return bytes.status();
  try {
    std::istringstream in(*bytes);
    archive->load_from(in);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", path, "' is not a DFC checkpoint: ", WhatTheFileIs(*bytes, e.what_without_backtrace())));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status SaveCheckpoint(const std::string& path, DetectorImpl& model, torch::optim::Optimizer* optimizer,
                            const CheckpointMeta& meta) {
  std::ostringstream out;
  try {
    torch::serialize::OutputArchive archive;
    WriteMeta(archive, meta);
    for (const auto& p : model.named_parameters()) archive.write("model/" + p.key(), p.value().detach().cpu());
    for (const auto& b : model.named_buffers()) archive.write("model/" + b.key(), b.value().cpu(), /*is_buffer=*/true);
    if (optimizer != nullptr) {
      torch::serialize::OutputArchive opt_archive;
      optimizer->save(opt_archive);
      archive.write("optimizer", opt_archive);
    }
    archive.write("rng/cpu", CpuRngState());
    archive.save_to(out);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("cannot serialise checkpoint: ", e.what_without_backtrace()));
  }
  DFC_RETURN_IF_ERROR(WriteFileAtomically(path, out.str()));
  run_dir::CheckpointSummary summary;
  summary.arch = meta.arch;
  summary.epoch = meta.epoch;
  summary.step = meta.step;
  const nlohmann::json history = nlohmann::json::parse(meta.metrics_json, nullptr, /*allow_exceptions=*/false);
  if (history.is_array() && !history.empty() && history.back().is_object()) {
    summary.val_accuracy = history.back().value("val_accuracy", 0.0);
    summary.val_auc = history.back().value("val_auc", 0.0);
    summary.val_loss = history.back().value("val_loss", 0.0);
  }
  return run_dir::WriteSidecar(path, summary);
}

torch::Tensor CpuRngState() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void SetCpuRngState(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

absl::StatusOr<CheckpointMeta> ReadCheckpointMeta(const std::string& path) {
  torch::serialize::InputArchive archive;
  DFC_RETURN_IF_ERROR(LoadArchive(path, &archive));
  try {
    return ReadMeta(archive, path);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("'", path, "': bad checkpoint metadata: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<CheckpointMeta> LoadCheckpoint(const std::string& path, DetectorImpl& model,
                                              torch::optim::Optimizer* optimizer, bool restore_rng) {
  torch::serialize::InputArchive archive;
  DFC_RETURN_IF_ERROR(LoadArchive(path, &archive));
  try {
    DFC_ASSIGN_OR_RETURN(CheckpointMeta meta, ReadMeta(archive, path));
    if (meta.arch != model.arch()) {
      return absl::InvalidArgumentError(absl::StrCat("checkpoint '", path, "' holds a ", meta.arch,
                                                     " model, not ", model.arch()));
    }
    torch::NoGradGuard no_grad;
    auto load = [&](const std::string& key, torch::Tensor& dst) -> absl::Status {
      torch::Tensor t;
      if (!archive.try_read("model/" + key, t)) {
        return absl::InvalidArgumentError(absl::StrCat("checkpoint '", path, "' lacks tensor '", key, "'"));
      }
      if (t.sizes() != dst.sizes()) {
        return absl::InvalidArgumentError(absl::StrCat("checkpoint '", path, "' tensor '", key, "' has shape ",
                                                       c10::str(t.sizes()), ", model expects ", c10::str(dst.sizes())));
      }
      dst.copy_(t);
      return absl::OkStatus();
    };
    for (auto& p : model.named_parameters()) DFC_RETURN_IF_ERROR(load(p.key(), p.value()));
    for (auto& b : model.named_buffers()) DFC_RETURN_IF_ERROR(load(b.key(), b.value()));
    if (optimizer != nullptr) {
      torch::serialize::InputArchive opt_archive;
      if (!archive.try_read("optimizer", opt_archive)) {
        return absl::InvalidArgumentError(absl::StrCat("checkpoint '", path, "' has no optimizer state"));
      }
      optimizer->load(opt_archive);
    }
    if (restore_rng) {
      torch::Tensor state;
      if (archive.try_read("rng/cpu", state)) SetCpuRngState(state);
    }
    return meta;
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot load checkpoint '", path, "': ", e.what_without_backtrace()));
  }
}

absl::Status SaveWeightsFile(const std::string& path, DetectorImpl& model, int64_t epoch) {
  WeightsFile f;
  f.arch = model.arch();
  f.epoch = epoch;
  std::vector<torch::Tensor> keep;  // owns the data the file's tensors point into
  auto add = [&](const std::string& name, const torch::Tensor& t) -> absl::Status {
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    WeightsTensor w;
    w.name = name;
    if (c.scalar_type() == torch::kFloat32) {
      w.dtype = WeightsTensor::Dtype::kFloat32;
    } else if (c.scalar_type() == torch::kInt64) {
      w.dtype = WeightsTensor::Dtype::kInt64;
    } else {
      return absl::InternalError(absl::StrCat("tensor '", name, "': ", c10::toString(c.scalar_type()),
                                              " has no place in a weights file"));
    }
    w.dims.assign(c.sizes().begin(), c.sizes().end());
    w.data = std::string_view(static_cast<const char*>(c.data_ptr()), c.nbytes());
    keep.push_back(c);
    f.tensors.push_back(std::move(w));
    return absl::OkStatus();
  };
  for (const auto& p : model.named_parameters()) DFC_RETURN_IF_ERROR(add(p.key(), p.value()));
  for (const auto& b : model.named_buffers()) DFC_RETURN_IF_ERROR(add(b.key(), b.value()));
  return WriteFileAtomically(path, SerializeWeightsFile(f));
}

bool IsWeightsFile(const std::string& path) {
  return FileStartsWith(path, std::string_view(kWeightsFileMagic, sizeof(kWeightsFileMagic) - 1));
}

absl::Status LoadWeightsFile(const std::string& path, DetectorImpl& model, CheckpointMeta* meta) {
  DFC_ASSIGN_OR_RETURN(const std::string bytes, ReadFile(path));
  auto parsed = ParseWeightsFile(bytes);
  if (!parsed.ok()) return absl::Status(parsed.status().code(), absl::StrCat("'", path, "': ", parsed.status().message()));
  if (parsed->arch != model.arch()) {
    return absl::InvalidArgumentError(absl::StrCat("weights file '", path, "' holds a ", parsed->arch,
                                                   " model, not ", model.arch()));
  }
  std::map<std::string_view, const WeightsTensor*> by_name;
  for (const WeightsTensor& t : parsed->tensors) by_name[t.name] = &t;
  torch::NoGradGuard no_grad;
  auto load = [&](const std::string& name, torch::Tensor& dst) -> absl::Status {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      return absl::InvalidArgumentError(absl::StrCat("weights file '", path, "' lacks tensor '", name, "'"));
    }
    const WeightsTensor& t = *it->second;
    const auto want = t.dtype == WeightsTensor::Dtype::kFloat32 ? torch::kFloat32 : torch::kInt64;
    if (dst.scalar_type() != want || dst.sizes() != c10::IntArrayRef(t.dims)) {
      return absl::InvalidArgumentError(absl::StrCat("weights file '", path, "' tensor '", name, "' is ",
                                                     c10::toString(want), c10::str(c10::IntArrayRef(t.dims)),
                                                     ", the model's is ", c10::toString(dst.scalar_type()),
                                                     c10::str(dst.sizes())));
    }
    torch::Tensor src = torch::from_blob(const_cast<char*>(t.data.data()), t.dims, torch::TensorOptions().dtype(want));
    dst.copy_(src);
    by_name.erase(it);
    return absl::OkStatus();
  };
  for (auto& p : model.named_parameters()) DFC_RETURN_IF_ERROR(load(p.key(), p.value()));
  for (auto& b : model.named_buffers()) DFC_RETURN_IF_ERROR(load(b.key(), b.value()));
  if (!by_name.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("weights file '", path, "' has a tensor the model lacks: '",
                                                   std::string(by_name.begin()->first), "'"));
  }
  if (meta != nullptr) {
    meta->arch = parsed->arch;
    meta->epoch = parsed->epoch;
  }
  return absl::OkStatus();
}

absl::Status LoadWeightsByContent(const std::string& path, DetectorImpl& model) {
  if (LooksLikeHdf5(path)) return ImportKerasWeights(model, path);
  if (IsWeightsFile(path)) return LoadWeightsFile(path, model);
  return LoadCheckpoint(path, model, nullptr, false).status();
}

}  // namespace dfc
