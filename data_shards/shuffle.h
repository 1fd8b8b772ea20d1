#ifndef DFC_DATA_SHARDS_SHUFFLE_H_
#define DFC_DATA_SHARDS_SHUFFLE_H_

#include <cstdint>
#include <vector>

namespace dfc {

// SplitMix64: a tiny, portable generator so that shuffles are identical on
// every platform and standard library (std::shuffle is not).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next();
  // Uniform in [0, n), n > 0.
  uint64_t Below(uint64_t n);

 private:
  uint64_t state_;
};

// The permutation of [0, n) used for (seed, epoch): Fisher-Yates over SplitMix64.
std::vector<uint32_t> EpochPermutation(uint32_t n, uint64_t seed, uint64_t epoch);

}  // namespace dfc

#endif  // DFC_DATA_SHARDS_SHUFFLE_H_
