#include "common/checksum.h"
#include "common/sha256.h"

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

TEST(Sha256Test, KnownVectorsInPieces) {
  Sha256 empty;
  EXPECT_EQ(empty.HexDigest(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  Sha256 abc;  // FIPS 180-2 appendix B.1, fed in two pieces
  abc.Update("a");
  abc.Update("bc");
  const std::string hex = abc.HexDigest();
  EXPECT_EQ(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_TRUE(IsSha256Hex(hex));
  EXPECT_FALSE(IsSha256Hex(hex.substr(1)));
  EXPECT_FALSE(IsSha256Hex("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD"));
}

}  // namespace
}  // namespace dfc
