#ifndef DFC_SERVING_BATCHER_H_
#define DFC_SERVING_BATCHER_H_

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/status/statusor.h"

namespace dfc {

// A model ready to serve: how big its input is and how to run it. `predict`
// gets n preprocessed images (RGB HWC uint8, input_size^2*3 bytes each) and
// returns n logits; it is only ever called from the batcher's thread.
struct ServedModel {
  std::string key;  // what identifies the weights (path, size, mtime)
  int input_size = 0;
  std::function<absl::StatusOr<std::vector<float>>(const uint8_t* pixels, int64_t n)> predict;
};

// One finished item.
struct EvalOutcome {
  std::string id;
  std::optional<int32_t> label;
  float logit = 0;
  float p_real = 0;
  std::string error;  // non-empty: no prediction
  std::chrono::steady_clock::time_point received;  // when its request arrived (latency)
};

class ServingMetrics;

// The results of one stream, in completion order, with the stream's
// in-flight budget: Acquire() before an item is read, Release() after its
// result was sent. Acquire blocks at the limit, which is what stops the
// reader from reading and lets gRPC flow control push back on the client.
class ResultQueue {
 public:
  explicit ResultQueue(int max_in_flight) : max_in_flight_(max_in_flight) {}
  // Waits for room; false once cancelled.
  bool Acquire();
  void Release();
  void Push(EvalOutcome outcome);
  // Next result; false when the input is closed and everything was delivered,
  // or the stream was cancelled.
  bool Pop(EvalOutcome* out);
  // No more items will be acquired.
  void CloseInput();
  // The client went away: queued work for this stream is dropped.
  void Cancel();
  bool cancelled() const;
  int in_flight() const;

 private:
  const int max_in_flight_;
  mutable absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<EvalOutcome> ready_ ABSL_GUARDED_BY(mu_);
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
};

// Dynamic batching across every open stream: items wait per model until
// `max_batch` of them are queued or the oldest has waited `max_delay`, then
// run as one forward pass on a single inference thread. The queue is
// bounded (`max_queued` items in all); Enqueue blocks while it is full.
class InferenceBatcher {
 public:
  struct Options {
    int max_batch = 8;  // CPU sweet spot for MesoInception-4 (docs/BENCH.md); raise on GPUs
    std::chrono::microseconds max_delay{0};  // 0: greedy, run as soon as the model is free
    int max_queued = 256;
    ServingMetrics* metrics = nullptr;  // optional: batch sizes and queue waits
  };
  struct Stats {
    int64_t batches = 0;
    int64_t items = 0;
    int64_t dropped = 0;  // items of cancelled streams never run
  };

  explicit InferenceBatcher(Options options);
  ~InferenceBatcher();
  InferenceBatcher(const InferenceBatcher&) = delete;
  InferenceBatcher& operator=(const InferenceBatcher&) = delete;

  // Queues one preprocessed image (input_size^2*3 bytes) for `model`; its
  // result goes to `results`. Blocks while the queue is full; false when the
  // stream was cancelled or the batcher is stopping (nothing was queued).
  bool Enqueue(const std::shared_ptr<ServedModel>& model, std::string id, std::optional<int32_t> label,
               std::vector<uint8_t> pixels, const std::shared_ptr<ResultQueue>& results,
               std::chrono::steady_clock::time_point received = std::chrono::steady_clock::now());

  Stats stats() const;
  const Options& options() const { return options_; }

 private:
  struct Item {
    std::string id;
    std::optional<int32_t> label;
    std::vector<uint8_t> pixels;
    std::shared_ptr<ResultQueue> results;
    std::chrono::steady_clock::time_point enqueued;
    std::chrono::steady_clock::time_point received;
  };
  struct ModelQueue {
    std::shared_ptr<ServedModel> model;
    std::deque<Item> items;
  };

  void Loop();
  void RunBatch(ServedModel& model, std::vector<Item>& batch) ABSL_LOCKS_EXCLUDED(mu_);
  // Drops items of cancelled streams; returns how many.
  int DropCancelledLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const Options options_;
  mutable absl::Mutex mu_;
  absl::CondVar work_;   // items arrived or stopping
  absl::CondVar room_;   // the queue has room again
  std::map<const ServedModel*, ModelQueue> queues_ ABSL_GUARDED_BY(mu_);
  int queued_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace dfc

#endif  // DFC_SERVING_BATCHER_H_
