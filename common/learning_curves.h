#ifndef DFC_COMMON_LEARNING_CURVES_H_
#define DFC_COMMON_LEARNING_CURVES_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dfc {

// Per-epoch series read from a metrics.jsonl ("epoch" plus numeric fields).
struct LearningCurves {
  std::vector<double> epochs;
  std::map<std::string, std::vector<double>> series;  // field -> value per epoch (NaN if absent)
};

// Parses metrics.jsonl text; errors name the line number.
absl::StatusOr<LearningCurves> ParseMetricsJsonl(const std::string& text);

// A self-contained SVG with two panels: losses (loss, val_loss) and scores
// (accuracy, val_accuracy, val_auc) against the epoch.
std::string RenderLearningCurvesSvg(const LearningCurves& curves, const std::string& title);

}  // namespace dfc

#endif  // DFC_COMMON_LEARNING_CURVES_H_
