#ifndef DFC_DATA_SHARDS_BATCH_LOADER_H_
#define DFC_DATA_SHARDS_BATCH_LOADER_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/status/status.h"
#include "data_shards/shard_format.h"

namespace dfc {

// One batch of images, RGB HWC uint8 (pixels = size * size * 3 * count).
struct Batch {
  int64_t index = 0;  // batch number within the epoch
  int count = 0;
  int image_size = 0;
  std::vector<uint8_t> pixels;
  std::vector<int32_t> labels;
  // Position of each image in the loader's record list (for tests and evaluation).
  std::vector<uint32_t> positions;
};

struct BatchLoaderOptions {
  int batch_size = 32;
  int image_size = 256;
  bool shuffle = true;
  uint64_t seed = 0;
  // Decoding threads; batches are prepared ahead of the consumer.
  int threads = 2;
  // How many batches may be ready or in preparation at once.
  int prefetch_batches = 4;
  bool drop_last = false;
};

// Loader counters, for "images/s" and "time the trainer waited".
struct LoaderStats {
  int64_t images = 0;
  double decode_seconds = 0;    // summed over worker threads
  double consumer_wait_seconds = 0;
};

// Serves a fixed list of records (what one rank reads) as batches, shuffled
// deterministically from (seed, epoch), decoded on worker threads ahead of
// the consumer, delivered in order. One consumer thread calls StartEpoch()
// and Next(); the workers are internal.
class BatchLoader {
 public:
  BatchLoader(const ShardSet* shards, std::vector<RecordRef> records, BatchLoaderOptions options);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // Begins an epoch; abandons whatever the previous epoch had left.
  void StartEpoch(uint64_t epoch);
  // Begins an epoch whose batches are given as positions into the record
  // list (a data-parallel rank's plan); a batch may be empty.
  void StartEpochWithBatches(std::vector<std::vector<uint32_t>> batches);
  // The next batch in order, nullopt at the end of the epoch, or an error
  // (a corrupt record) naming the shard and offset.
  absl::StatusOr<std::optional<Batch>> Next();

  // Batches of the current epoch (of a StartEpoch() epoch before the first).
  int64_t batches_per_epoch() const;
  size_t size() const { return records_.size(); }
  LoaderStats stats() const;
  // The record order of the current epoch (positions into the record list).
  std::vector<uint32_t> order() const;

 private:
  void StopWorkers();
  void WorkerLoop(uint64_t generation, int64_t total);
  absl::Status Fill(int64_t batch_index, Batch* batch, uint64_t generation);

  const ShardSet* const shards_;
  const std::vector<RecordRef> records_;
  const BatchLoaderOptions options_;

  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::vector<uint32_t>> batches_ ABSL_GUARDED_BY(mu_);
  int64_t next_to_claim_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t next_to_deliver_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<int64_t, absl::StatusOr<Batch>> ready_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  LoaderStats stats_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> workers_;  // only touched by the consumer thread
};

}  // namespace dfc

#endif  // DFC_DATA_SHARDS_BATCH_LOADER_H_
