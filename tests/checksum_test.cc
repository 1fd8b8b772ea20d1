#include "common/checksum.h"

#include <gtest/gtest.h>

namespace dfc {
namespace {

TEST(Crc32cTest, KnownVectors) {
  // RFC 3720 (iSCSI) check value.
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(""), 0u);
  std::string zeros(32, '\0');
  EXPECT_EQ(Crc32c(zeros), 0x8A9136AAu);
}

TEST(Crc32cTest, IncrementalEqualsWhole) {
  const std::string s = "the quick brown fox jumps over the lazy dog";
  EXPECT_EQ(Crc32c(s.substr(10), Crc32c(s.substr(0, 10))), Crc32c(s));
}

TEST(Fnv1aTest, KnownVectors) {
  Fnv1a64 empty;
  EXPECT_EQ(empty.digest(), 0xcbf29ce484222325ULL);
  Fnv1a64 a;
  a.Update("a");
  EXPECT_EQ(a.digest(), 0xaf63dc4c8601ec8cULL);
  EXPECT_EQ(a.HexDigest(), "af63dc4c8601ec8c");
}

}  // namespace
}  // namespace dfc
