#include "common/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace dfc {

double BinaryAuc(const std::vector<float>& scores, const std::vector<int32_t>& labels) {
  const size_t n = scores.size();
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  double pos = 0, neg = 0, rank_sum = 0;
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && scores[idx[j]] == scores[idx[i]]) ++j;
    const double avg_rank = (static_cast<double>(i) + static_cast<double>(j) + 1) / 2.0;  // 1-based
    for (size_t k = i; k < j; ++k) {
      if (labels[idx[k]] == 1) {
        rank_sum += avg_rank;
        pos += 1;
      } else {
        neg += 1;
      }
    }
    i = j;
  }
  if (pos == 0 || neg == 0) return std::numeric_limits<double>::quiet_NaN();
  return (rank_sum - pos * (pos + 1) / 2) / (pos * neg);
}

double Confusion::accuracy() const {
  const int64_t total = tp + fp + tn + fn;
  return total == 0 ? 0.0 : static_cast<double>(tp + tn) / static_cast<double>(total);
}

Confusion CountConfusion(const std::vector<float>& scores, const std::vector<int32_t>& labels, float threshold) {
  Confusion c;
  for (size_t i = 0; i < scores.size(); ++i) {
    const bool pred = scores[i] > threshold;
    const bool pos = labels[i] == 1;
    if (pred && pos) c.tp++;
    else if (pred) c.fp++;
    else if (pos) c.fn++;
    else c.tn++;
  }
  return c;
}

}  // namespace dfc
