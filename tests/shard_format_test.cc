#include "data_shards/shard_format.h"

#include <filesystem>
#include <fstream>
#include <set>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "data_shards/synth.h"
#include "tests/test_util.h"

namespace dfc {
namespace {
namespace fs = std::filesystem;

// A small dataset: 12 synthetic images plus one text file and one truncated
// JPEG posing as images.
class ShardFormatTest : public ::testing::Test {
 protected:
  void SetUp() override {
    SynthOptions opt;
    opt.count = 12;
    opt.image_size = 48;
    opt.out_dir = src_.path();
    ASSERT_TRUE(GenerateSyntheticDataset(opt).ok());
    testing::WriteFileOrDie(src_.Join("real/zz_text.jpg"), "this is not a JPEG");
    std::string jpg = testing::ReadFileOrDie(src_.Join("df/000001.jpg"));
    testing::WriteFileOrDie(src_.Join("df/zz_truncated.jpg"), jpg.substr(0, jpg.size() / 2));
  }

  absl::StatusOr<Manifest> Write(const std::string& out, RecordFormat fmt = RecordFormat::kEncoded,
                                 int64_t max_records = 0) {
    ScanOptions scan;
    scan.validation_split = 0.25;
    auto ds = ScanDataset(src_.path(), scan);
    if (!ds.ok()) return ds.status();
    ShardWriterOptions w;
    w.out_dir = out;
    w.image_size = 32;
    w.format = fmt;
    w.max_records_per_shard = max_records;
    return WriteShards(*ds, src_.path(), w);
  }

  testing::TempDir src_, out_;
};

TEST_F(ShardFormatTest, RoundTripKeepsSourceBytesLabelsAndCounts) {
  auto m = Write(out_.path(), RecordFormat::kEncoded, 4);
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->classes, (std::vector<std::string>{"df", "real"}));
  // 7 df files (6 + truncated), 7 real (6 + text): per class int(0.25*7)=1 validation.
  EXPECT_EQ(m->counts.at("validation"), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(m->counts.at("train"), (std::vector<int64_t>{5, 5}));
  ASSERT_EQ(m->skipped.size(), 2u);
  std::set<std::string> skipped;
  for (const auto& [path, reason] : m->skipped) skipped.insert(path + ": " + reason);
  EXPECT_NE(skipped.begin()->find("truncated"), std::string::npos) << *skipped.begin();
  EXPECT_NE(skipped.rbegin()->find("not a supported image"), std::string::npos) << *skipped.rbegin();
  EXPECT_FALSE(m->source_hash.empty());
  // 10 train records at 4 per shard -> 3 shards; 2 validation -> 1.
  EXPECT_EQ(m->shards.size(), 4u);

  auto set = ShardSet::Open(out_.path());
  ASSERT_TRUE(set.ok()) << set.status();
  auto train = (*set)->Records("train");
  ASSERT_EQ(train.size(), 10u);
  for (const RecordRef& ref : train) {
    auto rec = (*set)->Read(ref);
    ASSERT_TRUE(rec.ok()) << rec.status();
    EXPECT_EQ(rec->label, ref.label);
    EXPECT_EQ(rec->payload, testing::ReadFileOrDie(src_.Join(rec->name)));  // verbatim source bytes
    EXPECT_EQ(rec->label, rec->name.rfind("df/", 0) == 0 ? 0 : 1);
  }
  // The manifest is the same after a JSON round trip.
  auto again = ReadManifest(out_.path());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(ManifestToJson(*again), ManifestToJson(*m));

  auto report = VerifyShards(out_.path());
  ASSERT_TRUE(report.ok());
  EXPECT_TRUE(report->ok) << report->reason;
  EXPECT_EQ(report->records_checked, 12);
}

TEST_F(ShardFormatTest, Rgb8RecordsHoldResizedPixels) {
  auto m = Write(out_.path(), RecordFormat::kRgb8);
  ASSERT_TRUE(m.ok()) << m.status();
  auto set = ShardSet::Open(out_.path());
  ASSERT_TRUE(set.ok());
  auto rec = (*set)->Read((*set)->Records("train")[0]);
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->width, 32);
  std::vector<uint8_t> expected(32 * 32 * 3);
  ASSERT_TRUE(DecodeResizeInto(testing::ReadFileOrDie(src_.Join(rec->name)), 32, expected.data()).ok());
  EXPECT_EQ(std::vector<uint8_t>(rec->payload.begin(), rec->payload.end()), expected);
}

TEST_F(ShardFormatTest, FlippedByteIsFoundWithShardAndOffset) {
  auto m = Write(out_.path(), RecordFormat::kEncoded, 4);
  ASSERT_TRUE(m.ok());
  auto set = ShardSet::Open(out_.path());
  ASSERT_TRUE(set.ok());
  // Corrupt the payload of the second record of the second train shard.
  std::vector<RecordRef> refs;
  for (const RecordRef& r : (*set)->Records("train")) {
    if (r.shard == 1) refs.push_back(r);
  }
  ASSERT_GE(refs.size(), 2u);
  const RecordRef target = refs[1];
  const std::string shard_path = out_.Join(m->shards[1].file);
  {
    std::fstream f(shard_path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(target.offset + 200));
    char c;
    f.get(c);
    f.seekp(static_cast<std::streamoff>(target.offset + 200));
    f.put(static_cast<char>(c ^ 0x01));
  }
  set->reset();
  auto report = VerifyShards(out_.path());
  ASSERT_TRUE(report.ok());
  EXPECT_FALSE(report->ok);
  EXPECT_EQ(report->bad_shard, m->shards[1].file);
  EXPECT_EQ(report->bad_offset, target.offset);
  EXPECT_EQ(report->reason, "record checksum mismatch");

  auto reopened = ShardSet::Open(out_.path());
  ASSERT_TRUE(reopened.ok());
  auto rec = (*reopened)->Read(target);
  ASSERT_FALSE(rec.ok());
  EXPECT_EQ(rec.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(rec.status().message().find(m->shards[1].file), std::string::npos);
}

// File names need not be UTF-8 (a Latin-1 archive); the manifest must be.
// An undecodable image named so once made nlohmann::json::dump() throw
// and `dfc shard` abort, leaving a shard without a manifest.
TEST_F(ShardFormatTest, ANonUtf8FileNameIsEscapedInTheManifest) {
  testing::WriteFileOrDie(src_.Join("real/caf\xE9.jpg"), "not an image");
  auto m = Write(out_.path());
  ASSERT_TRUE(m.ok()) << m.status();
  const std::string text = testing::ReadFileOrDie(out_.Join("manifest.json"));
  EXPECT_NE(text.find("real/caf\\\\xE9.jpg"), std::string::npos) << text;  // \xE9, JSON-escaped
  auto back = ReadManifest(out_.path());
  ASSERT_TRUE(back.ok()) << back.status();
  bool listed = false;
  for (const auto& [path, reason] : back->skipped) listed |= path == "real/caf\\xE9.jpg";
  EXPECT_TRUE(listed);
}

TEST_F(ShardFormatTest, RefusesToOverwriteAndReportsMissingManifest) {
  ASSERT_TRUE(Write(out_.path()).ok());
  auto again = Write(out_.path());
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  auto none = ShardSet::Open(src_.path());
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("manifest.json"), std::string::npos);
}

TEST(ManifestTest, RejectsMalformedJson) {
  EXPECT_FALSE(ManifestFromJson("{").ok());
  EXPECT_FALSE(ManifestFromJson(R"({"format":"other"})").ok());
  auto bad_name = ManifestFromJson(
      R"({"format":"dfc-shards","version":1,"classes":["a","b"],"image_size":32,"record_format":"encoded",)"
      R"("source":{},"counts":{},"shards":[{"file":"../x","split":"train","records":1,"bytes":1,"crc32c":0,"per_class":[1,0]}]})");
  ASSERT_FALSE(bad_name.ok());
  EXPECT_NE(bad_name.status().message().find("../x"), std::string::npos);
}

// A shard directory written by hand: one train shard holding `records`
// (valid checksums, so only their contents are wrong), and a manifest whose
// image_size and record count are given as raw JSON when given.
void WriteHandMadeShards(const std::string& dir, const std::vector<Record>& records,
                         const std::string& image_size = "8", const std::string& records_field = "") {
  std::string shard(kShardMagic, kShardHeaderBytes);
  for (const Record& r : records) shard += EncodeRecord(r);
  testing::WriteFileOrDie(dir + "/train-00000.dfcs", shard);
  testing::WriteFileOrDie(
      dir + "/manifest.json",
      absl::StrCat(R"({"format":"dfc-shards","version":1,"classes":["df","real"],"image_size":)", image_size,
                   R"(,"record_format":"rgb8","source":{},"counts":{"train":[1,1]},"shards":[{"file":"train-00000.dfcs",)",
                   R"("split":"train","records":)", records_field.empty() ? std::to_string(records.size()) : records_field,
                   R"(,"bytes":)", shard.size(), R"(,"crc32c":)", Crc32c(shard), R"(,"per_class":[1,1]}]})"));
}

Record Rgb8(int32_t label, int32_t w, int32_t h) {
  Record r;
  r.label = label;
  r.format = RecordFormat::kRgb8;
  r.width = w;
  r.height = h;
  r.name = "df/x.png";
  r.payload.assign(static_cast<size_t>(std::max(w, 0)) * static_cast<size_t>(std::max(h, 0)) * 3, '\x10');
  return r;
}

// What tests/fuzz/shard_fuzz.cc (scripts/fuzz.sh) looks for, by hand: a
// shard whose checksums hold but whose contents a loader must not trust.
TEST(HandMadeShardTest, ALabelOutsideTheClassesIsDataLoss) {
  testing::TempDir dir;
  WriteHandMadeShards(dir.path(), {Rgb8(0, 2, 2), Rgb8(7, 2, 2)});
  auto report = VerifyShards(dir.path());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_FALSE(report->ok);
  EXPECT_NE(report->reason.find("label 7"), std::string::npos) << report->reason;
  // Opening finds it: the index's labels are used before any record is read
  // (the notebook recipe splits by them, indexing a per-class count).
  for (int32_t label : {7, -1}) {
    WriteHandMadeShards(dir.path(), {Rgb8(0, 2, 2), Rgb8(label, 2, 2)});
    auto bad = ShardSet::Open(dir.path());
    ASSERT_FALSE(bad.ok());
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_NE(bad.status().message().find(absl::StrCat("has label ", label, " but the manifest has 2 classes")),
              std::string::npos)
        << bad.status();
    EXPECT_NE(bad.status().message().find("train-00000.dfcs offset"), std::string::npos) << bad.status();
  }
}

TEST(HandMadeShardTest, AnEmptyRgb8RecordIsDataLoss) {
  // 0x0 pixels with an empty payload matched "width * height * 3" and then
  // the loader resized an image with no pixels.
  testing::TempDir dir;
  WriteHandMadeShards(dir.path(), {Rgb8(0, 0, 0), Rgb8(1, -1, 0)});
  auto set = ShardSet::Open(dir.path());
  ASSERT_TRUE(set.ok()) << set.status();
  for (const RecordRef& ref : (*set)->Records("train")) {
    auto rec = (*set)->Read(ref);
    ASSERT_FALSE(rec.ok());
    EXPECT_NE(rec.status().message().find("rgb8 record has a bad size"), std::string::npos) << rec.status();
  }
}

TEST(HandMadeShardTest, ManifestNumbersMustBeIntegersInRange) {
  testing::TempDir dir;
  // A float far outside int: the JSON library's own conversion is undefined.
  WriteHandMadeShards(dir.path(), {Rgb8(0, 2, 2)}, "2.2e19");
  auto size = ShardSet::Open(dir.path());
  ASSERT_FALSE(size.ok());
  EXPECT_EQ(size.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(size.status().message().find("image_size must be an integer"), std::string::npos) << size.status();
  WriteHandMadeShards(dir.path(), {Rgb8(0, 2, 2)}, "8", "-1");
  auto negative = ShardSet::Open(dir.path());
  ASSERT_FALSE(negative.ok());
  EXPECT_NE(negative.status().message().find("records is negative"), std::string::npos) << negative.status();
  // A count the file cannot hold is found out record by record, without
  // reserving room for 10^15 of them first.
  WriteHandMadeShards(dir.path(), {Rgb8(0, 2, 2)}, "8", "1000000000000000");
  auto huge = ShardSet::Open(dir.path());
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.status().message().find("train-00000.dfcs"), std::string::npos) << huge.status();
}

}  // namespace
}  // namespace dfc
