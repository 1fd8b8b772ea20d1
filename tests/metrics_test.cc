#include "common/metrics.h"

#include <cmath>

#include <gtest/gtest.h>

namespace dfc {
namespace {

TEST(BinaryAucTest, HandComputed) {
  // Pairs (pos, neg): (0.35,0.1) win, (0.35,0.4) loss, (0.8,0.1) win, (0.8,0.4) win -> 3/4.
  EXPECT_DOUBLE_EQ(BinaryAuc({0.1f, 0.4f, 0.35f, 0.8f}, {0, 0, 1, 1}), 0.75);
  EXPECT_DOUBLE_EQ(BinaryAuc({0.9f, 0.8f, 0.2f, 0.1f}, {1, 1, 0, 0}), 1.0);
  EXPECT_DOUBLE_EQ(BinaryAuc({0.9f, 0.8f, 0.2f, 0.1f}, {0, 0, 1, 1}), 0.0);
}

TEST(BinaryAucTest, TiesCountHalf) {
  EXPECT_DOUBLE_EQ(BinaryAuc({0.5f, 0.5f}, {0, 1}), 0.5);
  // pos 0.5 vs negs {0.5, 0.2}: 0.5 + 1 -> 0.75
  EXPECT_DOUBLE_EQ(BinaryAuc({0.5f, 0.5f, 0.2f}, {1, 0, 0}), 0.75);
}

TEST(BinaryAucTest, OneClassIsNan) { EXPECT_TRUE(std::isnan(BinaryAuc({0.1f, 0.2f}, {1, 1}))); }

TEST(ConfusionTest, HalfRoundsDownLikeKeras) {
  Confusion c = CountConfusion({0.5f, 0.51f, 0.2f, 0.9f}, {1, 1, 0, 0}, 0.5f);
  EXPECT_EQ(c.tp, 1);  // 0.51
  EXPECT_EQ(c.fn, 1);  // 0.5 is predicted negative
  EXPECT_EQ(c.tn, 1);
  EXPECT_EQ(c.fp, 1);
  EXPECT_DOUBLE_EQ(c.accuracy(), 0.5);
}

}  // namespace
}  // namespace dfc
