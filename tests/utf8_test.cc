// Text on its way into protobuf strings and JSON (common/utf8.h), and the
// client's check of a request before it is sent (common/rpc CheckUtf8Strings).
#include "common/utf8.h"

#include <gtest/gtest.h>

#include "common/rpc/rpc_util.h"
#include "dfc/v1/dfc.pb.h"

namespace dfc {
namespace {

TEST(Utf8Test, WellFormedTextIsUnchanged) {
  for (const std::string s : {"", "plain ascii", "caf\xC3\xA9", "\xE4\xB8\xAD\xE6\x96\x87.jpg", "\xF0\x9F\x98\x80",
                              "\xEF\xBF\xBF", "\xF4\x8F\xBF\xBF"}) {
    EXPECT_EQ(InvalidUtf8Offset(s), std::string::npos) << s;
    EXPECT_EQ(ValidUtf8(s), s);
  }
}

TEST(Utf8Test, EachBadByteIsEscapedAndTheRestKept) {
  EXPECT_EQ(InvalidUtf8Offset("caf\xE9.jpg"), 3u);
  EXPECT_EQ(ValidUtf8("caf\xE9.jpg"), "caf\\xE9.jpg");
  EXPECT_EQ(ValidUtf8("layer 'con\xC3" "2d_10'"), "layer 'con\\xC32d_10'");   // a lead byte without its continuation
  EXPECT_EQ(ValidUtf8("\x80x"), "\\x80x");                                    // a lone continuation byte
  EXPECT_EQ(ValidUtf8("\xC0\x80"), "\\xC0\\x80");                             // overlong NUL
  EXPECT_EQ(ValidUtf8("\xE0\x80\xAF"), "\\xE0\\x80\\xAF");                    // overlong '/'
  EXPECT_EQ(ValidUtf8("\xED\xA0\x80"), "\\xED\\xA0\\x80");                    // a UTF-16 surrogate
  EXPECT_EQ(ValidUtf8("\xF4\x90\x80\x80"), "\\xF4\\x90\\x80\\x80");           // past U+10FFFF
  // A line cut at a byte limit in the middle of a character (the worker
  // keeps 1,000 bytes of a rank's error line).
  EXPECT_EQ(ValidUtf8("\xE4\xB8\xAD\xE4\xB8"), "\xE4\xB8\xAD\\xE4\\xB8");
  EXPECT_EQ(InvalidUtf8Offset(ValidUtf8("\xFF\xFE any \xC3")), std::string::npos);
}

TEST(Utf8Test, ARequestNamesItsFirstNonUtf8Field) {
  v1::SubmitJobRequest req;
  req.mutable_config()->set_epochs(2);
  req.mutable_config()->set_data("/data/caf\xE9");
  EXPECT_TRUE(CheckUtf8Strings(v1::SubmitJobRequest()).ok());
  const absl::Status st = CheckUtf8Strings(req);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("config.data '/data/caf\\xE9' is not UTF-8 (byte 9)"), std::string::npos) << st;
  // A proto3 string that is not UTF-8 does not parse: what the check spares the receiver.
  v1::SubmitJobRequest back;
  EXPECT_FALSE(back.ParseFromString(req.SerializeAsString()));
  v1::HeartbeatRequest beat;
  beat.add_ranks()->set_error("fine");
  beat.add_ranks()->set_error("bad \xFF");
  const absl::Status rank = CheckUtf8Strings(beat);
  EXPECT_NE(rank.message().find("ranks[1].error"), std::string::npos) << rank;
}

// ToGrpc cuts a long status message so that it fits the peer's metadata limit,
// never inside a character (ClusterTest sends a 50,000-byte job id through it).
TEST(Utf8Test, ALongStatusMessageIsCutBetweenCharacters) {
  const std::string before(2047, 'a');
  const grpc::Status cut = ToGrpc(absl::NotFoundError(before + "\xc3\xa9" + std::string(5000, 'x')));
  EXPECT_EQ(cut.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(cut.error_message(), before + "... (5002 more bytes)");
  EXPECT_EQ(InvalidUtf8Offset(cut.error_message()), std::string_view::npos);
  const std::string limit(2048, 'b');  // at the limit: whole
  EXPECT_EQ(ToGrpc(absl::InternalError(limit)).error_message(), limit);
  EXPECT_EQ(ToGrpc(absl::InternalError(limit + "c")).error_message(), limit + "... (1 more bytes)");
}

}  // namespace
}  // namespace dfc
