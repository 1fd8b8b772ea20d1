#include "data_shards/shuffle.h"

#include <numeric>
#include <utility>

namespace dfc {

uint64_t SplitMix64::Next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t SplitMix64::Below(uint64_t n) {
  // Rejection sampling removes modulo bias.
  const uint64_t limit = ~uint64_t{0} - (~uint64_t{0} % n);
  uint64_t x;
  do {
    x = Next();
  } while (x >= limit);
  return x % n;
}

std::vector<uint32_t> EpochPermutation(uint32_t n, uint64_t seed, uint64_t epoch) {
  std::vector<uint32_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0u);
  SplitMix64 rng(seed * 0x100000001b3ULL ^ (epoch + 0x5851f42d4c957f2dULL));
  for (uint32_t i = n; i > 1; --i) {
    uint32_t j = static_cast<uint32_t>(rng.Below(i));
    std::swap(perm[i - 1], perm[j]);
  }
  return perm;
}

}  // namespace dfc
