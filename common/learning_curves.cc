#include "common/learning_curves.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

namespace dfc {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// One panel at (x0, y0) of size w x h.
void Panel(std::ostringstream& svg, const LearningCurves& c, const std::vector<std::string>& fields,
           const std::string& label, double x0, double y0, double w, double h, bool unit_range) {
  static const char* kColors[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"};
  double lo = unit_range ? 0 : std::numeric_limits<double>::infinity();
  double hi = unit_range ? 1 : -std::numeric_limits<double>::infinity();
  if (!unit_range) {
    for (const auto& f : fields) {
      auto it = c.series.find(f);
      if (it == c.series.end()) continue;
      for (double v : it->second) {
        if (std::isfinite(v)) {
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
      }
    }
    if (!std::isfinite(lo)) lo = 0, hi = 1;
    if (hi - lo < 1e-9) hi = lo + 1;
    lo = std::min(lo, 0.0);
  }
  const double e0 = c.epochs.empty() ? 0 : c.epochs.front();
  const double e1 = c.epochs.empty() ? 1 : std::max(c.epochs.back(), e0 + 1);
  auto px = [&](double e) { return x0 + (e - e0) / (e1 - e0) * w; };
  auto py = [&](double v) { return y0 + h - (v - lo) / (hi - lo) * h; };
  svg << absl::StrFormat("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#888\"/>\n",
                         x0, y0, w, h);
  svg << absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" font-size=\"13\">%s</text>\n", x0, y0 - 8, Escape(label));
  for (int i = 0; i <= 4; ++i) {
    const double v = lo + (hi - lo) * i / 4;
    svg << absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"end\">%.3g</text>\n", x0 - 4,
                           py(v) + 3, v);
  }
  svg << absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\">epoch %g</text>\n", x0, y0 + h + 14, e0);
  svg << absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"end\">epoch %g</text>\n", x0 + w,
                         y0 + h + 14, e1);
  int k = 0;
  for (const auto& f : fields) {
    auto it = c.series.find(f);
    if (it == c.series.end()) continue;
    std::string points;
    for (size_t i = 0; i < c.epochs.size() && i < it->second.size(); ++i) {
      if (std::isfinite(it->second[i])) absl::StrAppendFormat(&points, "%.1f,%.1f ", px(c.epochs[i]), py(it->second[i]));
    }
    const char* color = kColors[k % 4];
    svg << absl::StrFormat("<polyline class=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"%s\"/>\n",
                           Escape(f), color, points);
    svg << absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" fill=\"%s\">%s</text>\n", x0 + w + 8,
                           y0 + 14 + 16 * k, color, Escape(f));
    ++k;
  }
}

}  // namespace

absl::StatusOr<LearningCurves> ParseMetricsJsonl(const std::string& text) {
  LearningCurves c;
  int line_no = 0;
  std::vector<nlohmann::json> rows;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == absl::string_view::npos) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("epoch") || !j["epoch"].is_number()) {
      return absl::InvalidArgumentError(absl::StrCat("metrics line ", line_no, " is not a JSON object with an epoch"));
    }
    rows.push_back(std::move(j));
  }
  if (rows.empty()) return absl::InvalidArgumentError("no epochs in the metrics");
  for (const auto& r : rows) c.epochs.push_back(r["epoch"].get<double>());
  for (const char* f : {"loss", "val_loss", "accuracy", "val_accuracy", "val_auc"}) {
    std::vector<double> v;
    bool any = false;
    for (const auto& r : rows) {
      if (r.contains(f) && r[f].is_number()) {
        v.push_back(r[f].get<double>());
        any = true;
      } else {
        v.push_back(kNaN);
      }
    }
    if (any) c.series[f] = std::move(v);
  }
  return c;
}

std::string RenderLearningCurvesSvg(const LearningCurves& c, const std::string& title) {
  std::ostringstream svg;
  svg << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"980\" height=\"380\" font-family=\"sans-serif\">\n";
  svg << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  svg << "<text x=\"20\" y=\"24\" font-size=\"15\">" << Escape(title) << "</text>\n";
  Panel(svg, c, {"loss", "val_loss"}, "loss", 60, 60, 330, 270, false);
  Panel(svg, c, {"accuracy", "val_accuracy", "val_auc"}, "accuracy / AUC", 540, 60, 330, 270, true);
  svg << "</svg>\n";
  return svg.str();
}

}  // namespace dfc
