// InferenceBatcher and ResultQueue with a stand-in model (a unit test of the
// batching logic; the real model path is tested in evaluation_test).
#include "serving/batcher.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <set>
#include <thread>

#include <gtest/gtest.h>

namespace dfc {
namespace {

using namespace std::chrono_literals;

// A 1x1 "model" whose logit is the image's first byte; records batch sizes.
struct FakeModel {
  std::shared_ptr<ServedModel> served = std::make_shared<ServedModel>();
  std::mutex mu;
  std::vector<int64_t> batch_sizes;
  std::chrono::milliseconds delay{0};
  FakeModel() {
    served->key = "fake";
    served->input_size = 1;
    served->predict = [this](const uint8_t* px, int64_t n) -> absl::StatusOr<std::vector<float>> {
      std::this_thread::sleep_for(delay);
      std::lock_guard<std::mutex> lock(mu);
      batch_sizes.push_back(n);
      std::vector<float> out;
      for (int64_t i = 0; i < n; ++i) out.push_back(px[i * 3]);
      return out;
    };
  }
};

std::vector<uint8_t> Pixel(uint8_t v) { return {v, 0, 0}; }

TEST(BatcherTest, BatchesItemsOfSeveralStreamsUpToTheMaximum) {
  FakeModel model;
  InferenceBatcher batcher({/*max_batch=*/8, /*max_delay=*/200ms, /*max_queued=*/64});
  std::vector<std::shared_ptr<ResultQueue>> streams;
  for (int s = 0; s < 4; ++s) streams.push_back(std::make_shared<ResultQueue>(16));
  for (int i = 0; i < 16; ++i) {
    auto& q = streams[i % 4];
    ASSERT_TRUE(q->Acquire());
    ASSERT_TRUE(batcher.Enqueue(model.served, std::to_string(i), i % 2, Pixel(static_cast<uint8_t>(i)), q));
  }
  for (int s = 0; s < 4; ++s) {
    streams[s]->CloseInput();
    std::set<std::string> ids;
    EvalOutcome o;
    while (streams[s]->Pop(&o)) {
      EXPECT_TRUE(o.error.empty()) << o.error;
      EXPECT_EQ(std::stoi(o.id) % 4, s) << "a result went to the wrong stream";
      EXPECT_FLOAT_EQ(o.logit, static_cast<float>(std::stoi(o.id)));
      EXPECT_EQ(o.label, std::stoi(o.id) % 2);
      ids.insert(o.id);
      streams[s]->Release();
    }
    EXPECT_EQ(ids.size(), 4u);
  }
  // 16 items queued faster than the 200 ms delay: two full batches of 8.
  EXPECT_EQ(model.batch_sizes, (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(batcher.stats().items, 16);
}

TEST(BatcherTest, ALoneItemRunsAfterTheMaximumDelay) {
  FakeModel model;
  InferenceBatcher batcher({32, 30ms, 64});
  auto q = std::make_shared<ResultQueue>(4);
  ASSERT_TRUE(q->Acquire());
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(batcher.Enqueue(model.served, "a", std::nullopt, Pixel(7), q));
  EvalOutcome o;
  ASSERT_TRUE(q->Pop(&o));
  const auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_GE(waited, 30ms);
  EXPECT_FLOAT_EQ(o.logit, 7.0f);
  EXPECT_NEAR(o.p_real, 1.0f / (1.0f + std::exp(-7.0f)), 1e-7);
  EXPECT_FALSE(o.label.has_value());
}

TEST(BatcherTest, AFullQueueBlocksEnqueueUntilTheModelCatchesUp) {
  FakeModel model;
  model.delay = 100ms;
  InferenceBatcher batcher({2, 0ms, /*max_queued=*/2});
  auto q = std::make_shared<ResultQueue>(100);
  std::atomic<int> enqueued{0};
  std::thread producer([&] {
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(q->Acquire());
      ASSERT_TRUE(batcher.Enqueue(model.served, std::to_string(i), std::nullopt, Pixel(1), q));
      ++enqueued;
    }
  });
  std::this_thread::sleep_for(50ms);
  // One batch of 2 is running (100 ms), 2 more are queued: the producer waits.
  EXPECT_LE(enqueued.load(), 4);
  producer.join();
  q->CloseInput();
  int n = 0;
  EvalOutcome o;
  while (q->Pop(&o)) {
    ++n;
    q->Release();
  }
  EXPECT_EQ(n, 10);
}

TEST(BatcherTest, ACancelledStreamsQueuedItemsAreDroppedNotRun) {
  FakeModel model;
  model.delay = 100ms;
  InferenceBatcher batcher({1, 0ms, 64});
  auto keep = std::make_shared<ResultQueue>(64);
  auto gone = std::make_shared<ResultQueue>(64);
  ASSERT_TRUE(keep->Acquire());
  ASSERT_TRUE(batcher.Enqueue(model.served, "first", std::nullopt, Pixel(1), keep));  // occupies the model
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(gone->Acquire());
    ASSERT_TRUE(batcher.Enqueue(model.served, "x" + std::to_string(i), std::nullopt, Pixel(2), gone));
  }
  gone->Cancel();
  EXPECT_FALSE(gone->Acquire());  // a cancelled stream reads nothing more
  ASSERT_TRUE(keep->Acquire());
  ASSERT_TRUE(batcher.Enqueue(model.served, "second", std::nullopt, Pixel(3), keep));
  keep->CloseInput();
  std::vector<std::string> got;
  EvalOutcome o;
  while (keep->Pop(&o)) {
    got.push_back(o.id);
    keep->Release();
  }
  EXPECT_EQ(got, (std::vector<std::string>{"first", "second"}));
  EXPECT_EQ(batcher.stats().items, 2);
  EXPECT_EQ(batcher.stats().dropped, 20);
}

TEST(BatcherTest, AcquireBlocksAtTheInFlightLimit) {
  ResultQueue q(2);
  ASSERT_TRUE(q.Acquire());
  ASSERT_TRUE(q.Acquire());
  std::atomic<bool> third{false};
  std::thread t([&] { third = q.Acquire(); });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(third.load());
  q.Push(EvalOutcome{});
  EvalOutcome o;
  ASSERT_TRUE(q.Pop(&o));
  q.Release();  // the result was sent: room for one more
  t.join();
  EXPECT_TRUE(third.load());
  EXPECT_EQ(q.in_flight(), 2);
}

TEST(BatcherTest, AFailingModelAnswersEveryItemWithTheError) {
  auto served = std::make_shared<ServedModel>();
  served->input_size = 1;
  served->predict = [](const uint8_t*, int64_t) -> absl::StatusOr<std::vector<float>> {
    return absl::InternalError("out of memory");
  };
  InferenceBatcher batcher({4, 1ms, 16});
  auto q = std::make_shared<ResultQueue>(8);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(q->Acquire());
    ASSERT_TRUE(batcher.Enqueue(served, std::to_string(i), std::nullopt, Pixel(0), q));
  }
  q->CloseInput();
  int n = 0;
  EvalOutcome o;
  while (q->Pop(&o)) {
    EXPECT_EQ(o.error, "out of memory");
    ++n;
    q->Release();
  }
  EXPECT_EQ(n, 3);
}

}  // namespace
}  // namespace dfc
