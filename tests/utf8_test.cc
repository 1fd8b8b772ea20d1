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

TEST(Utf8Test, TextForATerminalCarriesNoControlsAndNoReordering) {
  // Text a user may print unchanged: ASCII, accents, CJK, emoji, backslashes.
  for (const std::string s : {"", "'/data/x' is not a shard directory", "caf\xC3\xA9 \xE4\xB8\xAD\xF0\x9F\x98\x80",
                              "C:\\path"}) {
    EXPECT_EQ(ForTerminal(s), s);
  }
  // An ANSI sequence that clears the screen, an OSC that retitles the
  // window (ended by BEL), NUL and DEL.
  EXPECT_EQ(ForTerminal("/tmp/x\x1B[2J\x1B]0;owned\x07y"), "/tmp/x\\x1B[2J\\x1B]0;owned\\x07y");
  EXPECT_EQ(ForTerminal(std::string("a\0b\x7F", 4)), "a\\x00b\\x7F");
  EXPECT_EQ(ForTerminal("line 1\nline 2\r\tx"), "line 1\\nline 2\\r\\tx");
  // C1 controls: CSI (U+009B) starts a sequence on many terminals.
  EXPECT_EQ(ForTerminal("a\xC2\x9B" "2Jb\xC2\x85"), "a\\u009B2Jb\\u0085");
  EXPECT_EQ(ForTerminal("\xC2\xA0"), "\xC2\xA0");  // U+00A0, the first after C1, is kept
  // Bidirectional overrides and isolates (U+202E makes "gpj.exe" read "exe.jpg").
  EXPECT_EQ(ForTerminal("x\xE2\x80\xAEgpj.exe"), "x\\u202Egpj.exe");
  EXPECT_EQ(ForTerminal("\xE2\x81\xA6" "a\xE2\x81\xA9"), "\\u2066a\\u2069");
  EXPECT_EQ(ForTerminal("\xE2\x80\xA9"), "\xE2\x80\xA9");  // U+2029 is not an override
  // Bytes that are not UTF-8, as ValidUtf8 writes them.
  EXPECT_EQ(ForTerminal("caf\xE9 \x1B"), "caf\\xE9 \\x1B");
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
