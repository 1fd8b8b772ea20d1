#include "serving/batcher.h"
#include "serving/serving_metrics.h"

#include <cstring>
#include <exception>

#include "common/metrics.h"

namespace dfc {

bool ResultQueue::Acquire() {
  absl::MutexLock lock(&mu_);
  while (!(cancelled_ || in_flight_ < max_in_flight_)) cv_.Wait(&mu_);
  if (cancelled_) return false;
  ++in_flight_;
  return true;
}

void ResultQueue::Release() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
  cv_.SignalAll();
}

void ResultQueue::Push(EvalOutcome outcome) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return;
  ready_.push_back(std::move(outcome));
  cv_.SignalAll();
}

bool ResultQueue::Pop(EvalOutcome* out) {
  absl::MutexLock lock(&mu_);
  while (!(cancelled_ || !ready_.empty() || (closed_ && in_flight_ == 0))) cv_.Wait(&mu_);
  if (cancelled_ || ready_.empty()) return false;
  *out = std::move(ready_.front());
  ready_.pop_front();
  return true;
}

void ResultQueue::CloseInput() {
  absl::MutexLock lock(&mu_);
  closed_ = true;
  cv_.SignalAll();
}

void ResultQueue::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  ready_.clear();
  cv_.SignalAll();
}

bool ResultQueue::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

int ResultQueue::in_flight() const {
  absl::MutexLock lock(&mu_);
  return in_flight_;
}

InferenceBatcher::InferenceBatcher(Options options) : options_(options) {
  thread_ = std::thread([this] { Loop(); });
}

InferenceBatcher::~InferenceBatcher() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  work_.SignalAll();
  room_.SignalAll();
  thread_.join();
}

bool InferenceBatcher::Enqueue(const std::shared_ptr<ServedModel>& model, std::string id,
                               std::optional<int32_t> label, std::vector<uint8_t> pixels,
                               const std::shared_ptr<ResultQueue>& results,
                               std::chrono::steady_clock::time_point received) {
  absl::MutexLock lock(&mu_);
  while (!stop_ && queued_ >= options_.max_queued) {
    if (results->cancelled()) return false;
    room_.WaitWithTimeout(&mu_, absl::FromChrono(std::chrono::milliseconds(50)));
  }
  if (stop_ || results->cancelled()) return false;
  ModelQueue& q = queues_[model.get()];
  if (!q.model) q.model = model;
  q.items.push_back(Item{std::move(id), label, std::move(pixels), results, std::chrono::steady_clock::now(),
                          received});
  ++queued_;
  work_.Signal();
  return true;
}

InferenceBatcher::Stats InferenceBatcher::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

int InferenceBatcher::DropCancelledLocked() {
  int dropped = 0;
  for (auto it = queues_.begin(); it != queues_.end();) {
    auto& items = it->second.items;
    for (auto i = items.begin(); i != items.end();) {
      if (i->results->cancelled()) {
        i = items.erase(i);
        ++dropped;
      } else {
        ++i;
      }
    }
    it = items.empty() ? queues_.erase(it) : std::next(it);
  }
  queued_ -= dropped;
  if (dropped) room_.SignalAll();
  return dropped;
}

void InferenceBatcher::RunBatch(ServedModel& model, std::vector<Item>& batch) {
  const size_t n = batch.size();
  const size_t image_bytes = static_cast<size_t>(model.input_size) * model.input_size * 3;
  std::vector<uint8_t> pixels(n * image_bytes);
  for (size_t i = 0; i < n; ++i) std::memcpy(pixels.data() + i * image_bytes, batch[i].pixels.data(), image_bytes);
  absl::StatusOr<std::vector<float>> logits = absl::InternalError("not run");
  try {
    logits = model.predict(pixels.data(), static_cast<int64_t>(n));
  } catch (const std::exception& e) {
    logits = absl::InternalError(std::string("inference failed: ") + e.what());
  }
  if (logits.ok() && logits->size() != n) logits = absl::InternalError("inference returned the wrong number of logits");
  for (size_t i = 0; i < n; ++i) {
    EvalOutcome out;
    out.id = std::move(batch[i].id);
    out.label = batch[i].label;
    out.received = batch[i].received;
    if (logits.ok()) {
      out.logit = (*logits)[i];
      out.p_real = PRealFromLogit(out.logit);
    } else {
      out.error = std::string(logits.status().message());
    }
    batch[i].results->Push(std::move(out));
  }
}

void InferenceBatcher::Loop() {
  mu_.Lock();
  while (!stop_) {
    stats_.dropped += DropCancelledLocked();
    // A full batch first; otherwise the model whose oldest item waited longest.
    ModelQueue* pick = nullptr;
    for (auto& entry : queues_) {
      ModelQueue& q = entry.second;
      if (static_cast<int>(q.items.size()) >= options_.max_batch) {
        pick = &q;
        break;
      }
      if (!pick || q.items.front().enqueued < pick->items.front().enqueued) pick = &q;
    }
    if (!pick) {
      work_.Wait(&mu_);
      continue;
    }
    const auto deadline = pick->items.front().enqueued + options_.max_delay;
    if (static_cast<int>(pick->items.size()) < options_.max_batch && std::chrono::steady_clock::now() < deadline) {
      work_.WaitWithTimeout(&mu_, absl::FromChrono(deadline - std::chrono::steady_clock::now()));
      continue;
    }
    const size_t n = std::min(pick->items.size(), static_cast<size_t>(options_.max_batch));
    std::vector<Item> batch(std::make_move_iterator(pick->items.begin()),
                            std::make_move_iterator(pick->items.begin() + static_cast<long>(n)));
    pick->items.erase(pick->items.begin(), pick->items.begin() + static_cast<long>(n));
    std::shared_ptr<ServedModel> model = pick->model;
    if (pick->items.empty()) queues_.erase(model.get());
    queued_ -= static_cast<int>(n);
    // Counted when taken, under the lock: a stream that has its results can
    // then rely on the stats including them.
    stats_.batches += 1;
    stats_.items += static_cast<int64_t>(n);
    room_.SignalAll();
    mu_.Unlock();
    if (options_.metrics != nullptr) {
      const auto now = std::chrono::steady_clock::now();
      options_.metrics->Batch(static_cast<int>(n));
      for (const Item& item : batch) options_.metrics->QueueWait(std::chrono::duration<double>(now - item.enqueued).count());
    }
    RunBatch(*model, batch);  // outside the lock: streams keep enqueueing
    mu_.Lock();
  }
  // Stopping: whatever is still queued gets an error, so no stream waits forever.
  for (auto& entry : queues_) {
    for (Item& item : entry.second.items) {
      EvalOutcome out;
      out.id = std::move(item.id);
      out.label = item.label;
      out.error = "the server is shutting down";
      item.results->Push(std::move(out));
    }
  }
  queues_.clear();
  queued_ = 0;
  mu_.Unlock();
}

}  // namespace dfc
