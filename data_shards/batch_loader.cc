#include "data_shards/batch_loader.h"

#include <chrono>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "data_shards/image_codec.h"
#include "data_shards/shuffle.h"

namespace dfc {
namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

BatchLoader::BatchLoader(const ShardSet* shards, std::vector<RecordRef> records, BatchLoaderOptions options)
    : shards_(shards), records_(std::move(records)), options_(options) {}

BatchLoader::~BatchLoader() { StopWorkers(); }

int64_t BatchLoader::batches_per_epoch() const {
  {
    absl::MutexLock lock(&mu_);
    if (generation_ > 0) return static_cast<int64_t>(batches_.size());
  }
  const int64_t n = static_cast<int64_t>(records_.size());
  const int64_t b = options_.batch_size;
  return options_.drop_last ? n / b : (n + b - 1) / b;
}

LoaderStats BatchLoader::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

std::vector<uint32_t> BatchLoader::order() const {
  absl::MutexLock lock(&mu_);
  std::vector<uint32_t> out;
  for (const auto& b : batches_) out.insert(out.end(), b.begin(), b.end());
  return out;
}

void BatchLoader::StopWorkers() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void BatchLoader::StartEpoch(uint64_t epoch) {
  std::vector<uint32_t> order;
  if (options_.shuffle) {
    order = EpochPermutation(static_cast<uint32_t>(records_.size()), options_.seed, epoch);
  } else {
    order.resize(records_.size());
    std::iota(order.begin(), order.end(), 0u);
  }
  std::vector<std::vector<uint32_t>> batches;
  const size_t b = static_cast<size_t>(options_.batch_size);
  for (size_t begin = 0; begin < order.size(); begin += b) {
    const size_t end = std::min(order.size(), begin + b);
    if (options_.drop_last && end - begin < b) break;
    batches.emplace_back(order.begin() + begin, order.begin() + end);
  }
  StartEpochWithBatches(std::move(batches));
}

void BatchLoader::StartEpochWithBatches(std::vector<std::vector<uint32_t>> batches) {
  StopWorkers();
  uint64_t gen;
  int64_t total;
  {
    absl::MutexLock lock(&mu_);
    stop_ = false;
    gen = ++generation_;
    batches_ = std::move(batches);
    total = static_cast<int64_t>(batches_.size());
    next_to_claim_ = 0;
    next_to_deliver_ = 0;
    ready_.clear();
  }
  for (int t = 0; t < std::max(1, options_.threads); ++t) {
    workers_.emplace_back([this, gen, total] { WorkerLoop(gen, total); });
  }
}

void BatchLoader::WorkerLoop(uint64_t generation, int64_t total) {
  for (;;) {
    int64_t index;
    {
      absl::MutexLock lock(&mu_);
      while (!(stop_ || next_to_claim_ >= total || next_to_claim_ < next_to_deliver_ + options_.prefetch_batches)) {
        cv_.Wait(&mu_);
      }
      if (stop_ || next_to_claim_ >= total) return;
      index = next_to_claim_++;
    }
    Batch batch;
    auto t0 = std::chrono::steady_clock::now();
    absl::Status st = Fill(index, &batch, generation);
    double secs = Since(t0);
    {
      absl::MutexLock lock(&mu_);
      if (generation != generation_) return;
      stats_.decode_seconds += secs;
      if (st.ok()) {
        stats_.images += batch.count;
        ready_.emplace(index, std::move(batch));
      } else {
        ready_.emplace(index, st);
      }
    }
    cv_.SignalAll();
  }
}

absl::Status BatchLoader::Fill(int64_t batch_index, Batch* batch, uint64_t generation) {
  std::vector<uint32_t> positions;
  {
    absl::MutexLock lock(&mu_);
    if (generation != generation_) return absl::CancelledError("epoch abandoned");
    positions = batches_[static_cast<size_t>(batch_index)];
  }
  const int size = options_.image_size;
  const size_t image_bytes = static_cast<size_t>(size) * size * 3;
  batch->index = batch_index;
  batch->count = static_cast<int>(positions.size());
  batch->image_size = size;
  batch->pixels.resize(image_bytes * positions.size());
  batch->labels.resize(positions.size());
  batch->positions = positions;
  for (size_t i = 0; i < positions.size(); ++i) {
    const RecordRef& ref = records_[positions[i]];
    auto rec = shards_->Read(ref);
    if (!rec.ok()) return rec.status();
    batch->labels[i] = rec->label;
    uint8_t* out = batch->pixels.data() + i * image_bytes;
    if (rec->format == RecordFormat::kRgb8 && rec->width == size && rec->height == size) {
      std::memcpy(out, rec->payload.data(), image_bytes);
    } else if (rec->format == RecordFormat::kRgb8) {
      RgbImage src{rec->width, rec->height, std::vector<uint8_t>(rec->payload.begin(), rec->payload.end())};
      RgbImage resized = ResizeNearestExact(src, size);
      std::memcpy(out, resized.pixels.data(), image_bytes);
    } else if (absl::Status st = DecodeResizeInto(rec->payload, size, out); !st.ok()) {
      return absl::DataLossError(absl::StrCat("record '", rec->name, "' (shard ",
                                              shards_->manifest().shards[ref.shard].file, " offset ",
                                              ref.offset, "): ", st.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Batch>> BatchLoader::Next() {
  auto t0 = std::chrono::steady_clock::now();
  std::map<int64_t, absl::StatusOr<Batch>>::node_type node;
  {
    absl::MutexLock lock(&mu_);
    const int64_t total = static_cast<int64_t>(batches_.size());
    if (next_to_deliver_ >= total) return std::optional<Batch>();
    if (workers_.empty()) return absl::FailedPreconditionError("BatchLoader::Next() before StartEpoch()");
    while (ready_.count(next_to_deliver_) == 0) cv_.Wait(&mu_);
    node = ready_.extract(next_to_deliver_);
    next_to_deliver_++;
    stats_.consumer_wait_seconds += Since(t0);
  }
  cv_.SignalAll();
  if (!node.mapped().ok()) return node.mapped().status();
  return std::optional<Batch>(std::move(node.mapped()).value());
}

}  // namespace dfc
