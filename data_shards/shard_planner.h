#ifndef DFC_DATA_SHARDS_SHARD_PLANNER_H_
#define DFC_DATA_SHARDS_SHARD_PLANNER_H_

#include <cstdint>
#include <vector>

namespace dfc {

// One rank's part of one epoch of data-parallel training.
struct RankEpochPlan {
  // For each step, the positions (into the job's record list) this rank
  // trains on. Every rank has the same number of steps; a rank's list may be
  // empty at the last step when fewer records than ranks remain.
  std::vector<std::vector<uint32_t>> steps;
  // For each step, the global batch size (all ranks together) and where this
  // rank's rows start in it.
  std::vector<int64_t> global_batch;
  std::vector<int64_t> offset;
};

// Plans epoch `epoch` for `rank` of `world_size`: the records are permuted by
// (seed, epoch) exactly as a single process would order them; global batch s
// is permutation[s*B, (s+1)*B) and rank r takes its r-th contiguous share
// (shares differ by at most one record). So every record is seen exactly once
// per epoch, the ranks' parts are disjoint and balanced, and the union of the
// ranks' step-s rows is the single process's step-s batch, in order.
// Deterministic in (num_records, global_batch_size, world_size, seed, epoch).
RankEpochPlan PlanRankEpoch(uint32_t num_records, int global_batch_size, int world_size, int rank, uint64_t seed,
                            uint64_t epoch, bool shuffle = true);

}  // namespace dfc

#endif  // DFC_DATA_SHARDS_SHARD_PLANNER_H_
