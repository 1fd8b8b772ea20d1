#ifndef DFC_COORDINATOR_MODEL_REGISTRY_H_
#define DFC_COORDINATOR_MODEL_REGISTRY_H_

#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "coordinator/batcher.h"
#include "coordinator/job_store.h"
#include "dfc/v1/dfc.pb.h"

namespace dfc {

struct ModelRegistryOptions {
  std::string models_dir;                   // imported weights: NAME.weights
  int max_loaded = 4;                       // models kept in memory (LRU)
  int threads = 0;                          // inference intra-op threads (0 = all cores)
  int64_t max_import_bytes = int64_t{2} << 30;
};

// Turns a ModelRef into a loaded model: a job's checkpoint (latest, best or
// an epoch) found through the job's output directory, or a model imported
// earlier. Loaded models are cached by file, size and modification time, so
// a newer best.ckpt is picked up. Thread-safe. (LibTorch stays in the .cc.)
class ModelRegistry {
 public:
  using JobLookup = std::function<absl::StatusOr<v1::Job>(const std::string& job_id)>;

  static absl::StatusOr<std::unique_ptr<ModelRegistry>> Create(ModelRegistryOptions options, JobStore* store,
                                                               JobLookup jobs);

  absl::StatusOr<std::pair<std::shared_ptr<ServedModel>, v1::ModelInfo>> Resolve(const v1::ModelRef& ref);

  // Checks an import header before any byte is accepted.
  absl::Status CheckImport(const v1::ImportModelRequest::Header& header);
  // A fresh temporary file in models_dir for an upload.
  std::string NewUploadPath();
  // Registers the uploaded weights: loads them as header.arch (so weights of
  // another architecture are refused, naming the tensor), then moves the
  // file into place and records it. The temporary file is removed on error.
  absl::StatusOr<v1::ModelInfo> Import(const v1::ImportModelRequest::Header& header, const std::string& uploaded);
  absl::StatusOr<std::vector<v1::ModelInfo>> List();

  const ModelRegistryOptions& options() const { return options_; }

 private:
  ModelRegistry(ModelRegistryOptions options, JobStore* store, JobLookup jobs)
      : options_(std::move(options)), store_(store), jobs_(std::move(jobs)) {}
  absl::StatusOr<std::shared_ptr<ServedModel>> Load(const std::string& arch, const std::string& path)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ModelRegistryOptions options_;
  JobStore* const store_;
  const JobLookup jobs_;
  std::mutex mu_;
  std::list<std::shared_ptr<ServedModel>> loaded_ ABSL_GUARDED_BY(mu_);  // most recent first
  uint64_t uploads_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace dfc

#endif  // DFC_COORDINATOR_MODEL_REGISTRY_H_
