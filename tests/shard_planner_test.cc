#include "data_shards/shard_planner.h"

#include <set>

#include <gtest/gtest.h>

#include "data_shards/shuffle.h"

namespace dfc {
namespace {

class ShardPlannerTest : public ::testing::TestWithParam<int> {};

TEST_P(ShardPlannerTest, DisjointBalancedExactlyOnceAndSingleProcessOrder) {
  const int world = GetParam();
  for (uint32_t n : {0u, 1u, 5u, 37u, 64u, 101u}) {
    for (int batch : {1, 4, 8, 32}) {
      std::vector<RankEpochPlan> plans;
      for (int r = 0; r < world; ++r) plans.push_back(PlanRankEpoch(n, batch, world, r, 7, 3));
      const RankEpochPlan single = PlanRankEpoch(n, batch, 1, 0, 7, 3);
      std::multiset<uint32_t> seen;
      for (int r = 0; r < world; ++r) {
        ASSERT_EQ(plans[r].steps.size(), single.steps.size()) << "every rank runs the same number of steps";
      }
      for (size_t s = 0; s < single.steps.size(); ++s) {
        std::vector<uint32_t> joined;
        size_t smallest = SIZE_MAX, largest = 0;
        for (int r = 0; r < world; ++r) {
          EXPECT_EQ(plans[r].offset[s], static_cast<int64_t>(joined.size()));
          EXPECT_EQ(plans[r].global_batch[s], static_cast<int64_t>(single.steps[s].size()));
          joined.insert(joined.end(), plans[r].steps[s].begin(), plans[r].steps[s].end());
          smallest = std::min(smallest, plans[r].steps[s].size());
          largest = std::max(largest, plans[r].steps[s].size());
        }
        EXPECT_EQ(joined, single.steps[s]) << "n " << n << " batch " << batch << " step " << s;
        EXPECT_LE(largest - smallest, 1u);
        seen.insert(joined.begin(), joined.end());
      }
      ASSERT_EQ(seen.size(), n);
      for (uint32_t i = 0; i < n; ++i) EXPECT_EQ(seen.count(i), 1u);
    }
  }
}

TEST_P(ShardPlannerTest, DeterministicPerEpoch) {
  const int world = GetParam();
  auto a = PlanRankEpoch(100, 8, world, 0, 1, 0);
  EXPECT_EQ(a.steps, PlanRankEpoch(100, 8, world, 0, 1, 0).steps);
  EXPECT_NE(a.steps, PlanRankEpoch(100, 8, world, 0, 1, 1).steps);
  // The single-process order is the loader's shuffle for (seed, epoch).
  auto single = PlanRankEpoch(10, 10, 1, 0, 5, 2);
  EXPECT_EQ(single.steps[0], EpochPermutation(10, 5, 2));
}

INSTANTIATE_TEST_SUITE_P(WorldSizes, ShardPlannerTest, ::testing::Values(1, 2, 3, 4, 8));

}  // namespace
}  // namespace dfc
