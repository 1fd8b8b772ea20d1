#include "common/learning_curves.h"

#include <cmath>
#include <regex>

#include <gtest/gtest.h>

namespace dfc {
namespace {

TEST(LearningCurvesTest, ParsesSeriesAndRendersOnePolylinePerField) {
  auto c = ParseMetricsJsonl(
      "{\"epoch\":1,\"loss\":0.9,\"val_loss\":0.8,\"accuracy\":0.6,\"val_accuracy\":0.5,\"val_auc\":0.55}\n"
      "{\"epoch\":2,\"loss\":0.5,\"val_loss\":0.6,\"accuracy\":0.8,\"val_accuracy\":0.75,\"val_auc\":null}\n"
      "\n"
      "{\"epoch\":3,\"loss\":0.3,\"val_loss\":0.4,\"accuracy\":0.9,\"val_accuracy\":0.85,\"val_auc\":0.9}\n");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->epochs, (std::vector<double>{1, 2, 3}));
  EXPECT_DOUBLE_EQ(c->series.at("loss")[1], 0.5);
  EXPECT_TRUE(std::isnan(c->series.at("val_auc")[1]));  // null is a gap, not a zero
  const std::string svg = RenderLearningCurvesSvg(*c, "run <1>");
  EXPECT_NE(svg.find("run &lt;1&gt;"), std::string::npos);
  for (const char* f : {"loss", "val_loss", "accuracy", "val_accuracy", "val_auc"}) {
    std::smatch m;
    ASSERT_TRUE(std::regex_search(svg, m, std::regex(std::string("class=\"") + f + "\"[^>]*points=\"([^\"]*)\"")))
        << f;
    const std::string points = m[1];
    const long n = std::count(points.begin(), points.end(), ',');
    EXPECT_EQ(n, std::string(f) == "val_auc" ? 2 : 3) << f << ": " << points;
  }
  // The loss panel's first point is higher on the page (smaller y) than its last.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(svg, m, std::regex("class=\"loss\"[^>]*points=\"[0-9.]+,([0-9.]+) [0-9.]+,[0-9.]+ [0-9.]+,([0-9.]+)")));
  EXPECT_GT(std::stod(m[2]), std::stod(m[1]));
}

TEST(LearningCurvesTest, BadLinesNameTheLine) {
  auto r = ParseMetricsJsonl("{\"epoch\":1,\"loss\":1}\nnot json\n");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("line 2"), std::string::npos) << r.status();
  EXPECT_FALSE(ParseMetricsJsonl("").ok());
}

}  // namespace
}  // namespace dfc
