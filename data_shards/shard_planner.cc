#include "data_shards/shard_planner.h"

#include <numeric>

#include "data_shards/shuffle.h"

namespace dfc {

RankEpochPlan PlanRankEpoch(uint32_t num_records, int global_batch_size, int world_size, int rank, uint64_t seed,
                            uint64_t epoch, bool shuffle) {
  std::vector<uint32_t> order;
  if (shuffle) {
    order = EpochPermutation(num_records, seed, epoch);
  } else {
    order.resize(num_records);
    std::iota(order.begin(), order.end(), 0u);
  }
  RankEpochPlan plan;
  const int64_t b = global_batch_size;
  for (int64_t begin = 0; begin < static_cast<int64_t>(num_records); begin += b) {
    const int64_t size = std::min<int64_t>(b, num_records - begin);
    // Rank r's share: [r*size/W, (r+1)*size/W) -- sizes differ by at most one.
    const int64_t lo = begin + size * rank / world_size;
    const int64_t hi = begin + size * (rank + 1) / world_size;
    plan.steps.emplace_back(order.begin() + lo, order.begin() + hi);
    plan.global_batch.push_back(size);
    plan.offset.push_back(lo - begin);
  }
  return plan;
}

}  // namespace dfc
