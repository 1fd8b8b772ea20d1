#ifndef DFC_COMMON_METRICS_H_
#define DFC_COMMON_METRICS_H_

#include <cmath>
#include <cstdint>
#include <vector>

namespace dfc {

// P(real) from a detector's logit: the one sigmoid `dfc predict` and the
// Evaluate stream both print, so their numbers agree.
inline float PRealFromLogit(float logit) { return 1.0f / (1.0f + std::exp(-logit)); }

// Area under the ROC curve for binary labels (1 = positive), ties counted as
// half (the Mann-Whitney statistic). NaN when one class is absent.
double BinaryAuc(const std::vector<float>& scores, const std::vector<int32_t>& labels);

// Counts at a threshold: predicted positive when score > threshold (Keras rounds 0.5 down).
struct Confusion {
  int64_t tp = 0, fp = 0, tn = 0, fn = 0;
  double accuracy() const;
};
Confusion CountConfusion(const std::vector<float>& scores, const std::vector<int32_t>& labels, float threshold);

}  // namespace dfc

#endif  // DFC_COMMON_METRICS_H_
