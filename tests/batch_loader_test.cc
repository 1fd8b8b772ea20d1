#include "data_shards/batch_loader.h"

#include <algorithm>
#include <set>

#include <gtest/gtest.h>

#include "data_shards/shuffle.h"
#include "data_shards/synth.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

class BatchLoaderTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    src_ = new testing::TempDir();
    out_ = new testing::TempDir();
    SynthOptions opt;
    opt.count = 22;
    opt.image_size = 40;
    opt.out_dir = src_->path();
    ASSERT_TRUE(GenerateSyntheticDataset(opt).ok());
    ScanOptions scan;
    scan.validation_split = 0;
    auto ds = ScanDataset(src_->path(), scan);
    ASSERT_TRUE(ds.ok());
    ShardWriterOptions w;
    w.out_dir = out_->path();
    w.image_size = 32;
    w.max_records_per_shard = 5;
    ASSERT_TRUE(WriteShards(*ds, src_->path(), w).ok());
  }
  static void TearDownTestSuite() {
    delete src_;
    delete out_;
  }

  std::vector<std::vector<uint32_t>> Epoch(BatchLoader& loader, uint64_t epoch, std::vector<Batch>* batches = nullptr) {
    loader.StartEpoch(epoch);
    std::vector<std::vector<uint32_t>> out;
    for (;;) {
      auto b = loader.Next();
      EXPECT_TRUE(b.ok()) << b.status();
      if (!b.ok() || !b->has_value()) break;
      out.push_back((*b)->positions);
      if (batches) batches->push_back(std::move(**b));
    }
    return out;
  }

  static testing::TempDir* src_;
  static testing::TempDir* out_;
};
testing::TempDir* BatchLoaderTest::src_ = nullptr;
testing::TempDir* BatchLoaderTest::out_ = nullptr;

TEST(ShuffleTest, PermutationIsDeterministicAndComplete) {
  auto a = EpochPermutation(100, 7, 3);
  EXPECT_EQ(a, EpochPermutation(100, 7, 3));
  EXPECT_NE(a, EpochPermutation(100, 7, 4));
  EXPECT_NE(a, EpochPermutation(100, 8, 3));
  auto sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (uint32_t i = 0; i < 100; ++i) EXPECT_EQ(sorted[i], i);
}

TEST_F(BatchLoaderTest, EveryRecordOncePerEpochInDeterministicOrder) {
  auto set = ShardSet::Open(out_->path());
  ASSERT_TRUE(set.ok());
  auto records = (*set)->Records("train");
  ASSERT_EQ(records.size(), 22u);
  BatchLoaderOptions o;
  o.batch_size = 4;
  o.image_size = 32;
  o.seed = 11;
  o.threads = 3;
  o.prefetch_batches = 2;
  BatchLoader a(set->get(), records, o), b(set->get(), records, o);
  auto e0 = Epoch(a, 0);
  ASSERT_EQ(e0.size(), 6u);  // 5 full batches + 2 left over
  EXPECT_EQ(e0.back().size(), 2u);
  std::multiset<uint32_t> seen;
  for (const auto& batch : e0) seen.insert(batch.begin(), batch.end());
  EXPECT_EQ(seen.size(), 22u);
  for (uint32_t i = 0; i < 22; ++i) EXPECT_EQ(seen.count(i), 1u) << i;
  EXPECT_EQ(e0, Epoch(b, 0));  // same (seed, epoch): same order, whatever the threads did
  EXPECT_NE(e0, Epoch(a, 1));  // another epoch: another order
  EXPECT_EQ(a.stats().images, 44);
}

TEST_F(BatchLoaderTest, PixelsAndLabelsMatchTheRecords) {
  auto set = ShardSet::Open(out_->path());
  ASSERT_TRUE(set.ok());
  // A rank's subset: every third record.
  std::vector<RecordRef> subset;
  auto all = (*set)->Records("train");
  for (size_t i = 0; i < all.size(); i += 3) subset.push_back(all[i]);
  BatchLoaderOptions o;
  o.batch_size = 3;
  o.image_size = 32;
  o.drop_last = true;
  BatchLoader loader(set->get(), subset, o);
  std::vector<Batch> batches;
  Epoch(loader, 5, &batches);
  ASSERT_EQ(static_cast<int64_t>(batches.size()), loader.batches_per_epoch());
  ASSERT_EQ(batches.size(), subset.size() / 3);
  for (const Batch& b : batches) {
    for (int i = 0; i < b.count; ++i) {
      auto rec = (*set)->Read(subset[b.positions[i]]);
      ASSERT_TRUE(rec.ok());
      EXPECT_EQ(b.labels[i], rec->label);
      std::vector<uint8_t> expected(32 * 32 * 3);
      ASSERT_TRUE(DecodeResizeInto(rec->payload, 32, expected.data()).ok());
      EXPECT_TRUE(std::equal(expected.begin(), expected.end(), b.pixels.begin() + i * expected.size()));
    }
  }
}

TEST_F(BatchLoaderTest, AbandoningAnEpochMidwayIsSafe) {
  auto set = ShardSet::Open(out_->path());
  ASSERT_TRUE(set.ok());
  BatchLoaderOptions o;
  o.batch_size = 2;
  o.image_size = 32;
  BatchLoader loader(set->get(), (*set)->Records("train"), o);
  loader.StartEpoch(0);
  ASSERT_TRUE(loader.Next().ok());
  auto full = Epoch(loader, 1);  // restart before the first epoch ended
  EXPECT_EQ(full.size(), 11u);
}

}  // namespace
}  // namespace dfc
