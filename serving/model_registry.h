#ifndef DFC_SERVING_MODEL_REGISTRY_H_
#define DFC_SERVING_MODEL_REGISTRY_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "dfc/v1/dfc.pb.h"
#include "serving/batcher.h"
#include "serving/model_catalog.h"
#include "serving/weights_converter.h"

namespace dfc {

struct ModelRegistryOptions {
  std::string models_dir;  // where imports are written (the shared volume)
  int max_loaded = 4;      // models kept in memory (least recently used goes first)
  int threads = 0;         // inference intra-op threads (0 = UsableCpus: affinity and cgroup limit)
  std::string device;      // "" or "cpu"; "cuda:N" on a CUDA build
  std::string precision = "fp32";  // the forward pass: fp32, bf16 or fp16 (autocast; CUDA for fp16)
  int64_t max_import_bytes = int64_t{2} << 30;
  // Uploads are parsed by a confined child process (weights_converter.h),
  // at most max_converting at once (each may use converter.memory_bytes).
  WeightsConverterOptions converter;
  int max_converting = 2;
  // Tests only: runs on the loading thread before the weights are read.
  std::function<void(const std::string& name)> before_load;
};

// Turns a ModelRef into a loaded model, asking the coordinator's catalogue
// where its weights are: an imported name, or a job's checkpoint (latest,
// best or an epoch) in the job's run directory. Loaded models are cached by
// architecture, file, size and modification time, so a newer best.ckpt is
// picked up. A load runs outside the registry's lock: streams of models that
// are loaded never wait for another model's load, and streams of the model
// being loaded wait for that one load. Thread-safe. (LibTorch stays in the .cc.)
class ModelRegistry {
 public:
  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Create(ModelRegistryOptions options,
                                                               std::shared_ptr<ModelCatalog> catalog);

  absl::StatusOr<std::pair<std::shared_ptr<ServedModel>, v1::ModelInfo>> Resolve(const v1::ModelRef& ref);

  // Checks an import header before any byte is accepted.
  absl::Status CheckImport(const v1::ImportModelRequest::Header& header);
  // A fresh temporary file in models_dir for an upload.
  std::string NewUploadPath();
  // Converts the uploaded weights as header.arch in a confined child
  // (weights of another architecture are refused, naming the tensor), loads
  // the converted weights file, stores it under a name of its own in
  // models_dir and records it in the catalogue (so every replica can serve
  // it). The upload is removed in any case.
  // `sha256`: the uploaded bytes' digest, recorded in the model's info.
  absl::StatusOr<v1::ModelInfo> Import(const v1::ImportModelRequest::Header& header, const std::string& uploaded,
                                       const std::string& sha256);
  // The catalogue's models with this replica's state of each, then the job
  // checkpoints this replica holds.
  absl::StatusOr<std::vector<v1::ModelInfo>> List();
  // Models in memory now (loaded and not evicted).
  int LoadedCount();

  const ModelRegistryOptions& options() const { return options_; }

 private:
  struct Entry {
    v1::ModelInfo info;  // name, arch, state, load_error
    std::string path;
    std::shared_ptr<ServedModel> model;
    uint64_t last_used = 0;
  };

  ModelRegistry(ModelRegistryOptions options, std::shared_ptr<ModelCatalog> catalog)
      : options_(std::move(options)), catalog_(std::move(catalog)) {}
  // The cached model under `info` (arch, name), loading it if needed.
  absl::StatusOr<std::shared_ptr<ServedModel>> Load(const v1::ModelInfo& info, const std::string& path);
  // A served-weights file, loaded (`epoch`: the file's).
  absl::StatusOr<std::shared_ptr<ServedModel>> LoadWeights(const std::string& arch, const std::string& path,
                                                           int64_t* epoch);
  // Any weights file of `info`'s: a served-weights file is loaded; anything
  // else (a job checkpoint, a model stored before the converter existed) is
  // converted in the confined child first.
  absl::StatusOr<std::shared_ptr<ServedModel>> LoadFile(const v1::ModelInfo& info, const std::string& path,
                                                        int64_t* epoch);
  void EvictLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // ConvertWeights, waiting for a free converter slot.
  absl::Status Convert(const std::string& arch, const std::string& input, const std::string& out,
                       const std::string& subject);
  // A fresh path in models_dir for this process's work, ending in `extension`.
  std::string NewWorkPath(const std::string& extension);
  absl::StatusOr<std::pair<std::string, v1::ModelInfo>> JobCheckpoint(const v1::ModelRef::JobCheckpoint& ref);

  const ModelRegistryOptions options_;
  const std::shared_ptr<ModelCatalog> catalog_;
  absl::Mutex mu_;
  absl::CondVar load_done_;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);  // by cache key
  uint64_t clock_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t work_paths_ ABSL_GUARDED_BY(mu_) = 0;  // NewWorkPath's counter
  // Converter children running (at most options_.max_converting).
  absl::Mutex convert_mu_;
  absl::CondVar convert_done_;
  int converting_ ABSL_GUARDED_BY(convert_mu_) = 0;
  std::string sandbox_ ABSL_GUARDED_BY(convert_mu_);  // the last converter's confinement, as logged
};

}  // namespace dfc

#endif  // DFC_SERVING_MODEL_REGISTRY_H_
