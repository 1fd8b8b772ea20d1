#include "common/record_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <string>

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace dfc {
namespace {

// What a writer appended comes back whole and in order; a record still being
// written waits for the next read, which starts where this one stopped.
TEST(RecordFileTest, CompleteRecordsComeBackAndAPartialOneWaits) {
  testing::TempDir dir;
  const std::string path = dir.Join("reports");
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(AppendRecord(fd, "first").ok());
  ASSERT_TRUE(AppendRecord(fd, "").ok());
  ASSERT_TRUE(AppendRecord(fd, std::string(1000, '\0')).ok());
  ::close(fd);
  const std::string bytes = testing::ReadFileOrDie(path);
  ASSERT_EQ(bytes.size(), 4u + 5 + 4 + 4 + 1000);
  auto all = DecodeRecords(bytes, 4096);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].payload, "first");
  EXPECT_EQ((*all)[0].end, 9u);
  EXPECT_EQ((*all)[1].payload, "");
  EXPECT_EQ((*all)[2].payload, std::string(1000, '\0'));
  EXPECT_EQ((*all)[2].end, bytes.size());
  // Cut inside the third record's length, then inside its payload.
  for (size_t cut : {bytes.size() - 1000 - 2, bytes.size() - 10}) {
    auto some = DecodeRecords(std::string_view(bytes).substr(0, cut), 4096);
    ASSERT_TRUE(some.ok()) << some.status();
    ASSERT_EQ(some->size(), 2u) << cut;
    auto rest = DecodeRecords(std::string_view(bytes).substr(some->back().end), 4096);
    ASSERT_TRUE(rest.ok());
    ASSERT_EQ(rest->size(), 1u);
    EXPECT_EQ((*rest)[0].payload, std::string(1000, '\0'));
  }
}

// A length over the limit (a damaged file, or one written to mislead) is
// refused naming the offset, instead of a read of gigabytes.
TEST(RecordFileTest, AnOversizedLengthIsRefusedNamingTheOffset) {
  const std::string bytes = EncodeRecord("ok") + std::string("\xff\xff\xff\x7f", 4) + "x";
  auto r = DecodeRecords(bytes, 64 << 10);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("record at offset 6 claims 2147483647 bytes (at most 65536)"), std::string::npos)
      << r.status();
  EXPECT_TRUE(DecodeRecords(EncodeRecord(std::string(65536, 'a')), 64 << 10).ok());
  EXPECT_FALSE(DecodeRecords(EncodeRecord(std::string(65537, 'a')), 64 << 10).ok());
}

}  // namespace
}  // namespace dfc
