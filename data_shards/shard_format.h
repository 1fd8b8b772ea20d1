#ifndef DFC_DATA_SHARDS_SHARD_FORMAT_H_
#define DFC_DATA_SHARDS_SHARD_FORMAT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "data_shards/dataset_scan.h"
#include "data_shards/image_codec.h"

namespace dfc {

// How a record stores its image. See docs/SHARDS.md for why kEncoded is the
// default.
enum class RecordFormat : uint8_t {
  kEncoded = 0,  // the source file's bytes, verbatim (JPEG/PNG/...)
  kRgb8 = 1,     // pixels already resized to image_size, RGB HWC uint8
};

inline constexpr char kManifestFile[] = "manifest.json";
// Held (flock) by the `dfc shard` writing the directory, and removed when it ends.
inline constexpr char kShardLockFile[] = "shard.lock";
inline constexpr char kShardMagic[8] = {'D', 'F', 'C', 'S', 'H', 'R', 'D', '1'};
inline constexpr uint32_t kRecordMagic = 0x43455244;  // "DREC"
inline constexpr size_t kShardHeaderBytes = 8;
inline constexpr size_t kRecordHeaderBytes = 12;  // magic, body length, crc32c(body)
inline constexpr uint32_t kMaxRecordBytes = 64u << 20;

struct ShardInfo {
  std::string file;   // name inside the shard directory
  std::string split;  // "train" or "validation"
  int64_t records = 0;
  int64_t bytes = 0;
  uint32_t crc32c = 0;              // of the whole file
  std::vector<int64_t> per_class;   // record count per class
};

// The manifest.json of a shard directory.
struct Manifest {
  int version = 1;
  std::vector<std::string> classes;
  int image_size = 256;
  RecordFormat record_format = RecordFormat::kEncoded;
  std::string source_path;
  std::string source_hash;  // FNV-1a 64 over (relative path, label, bytes) of every source file
  std::string train_source;
  std::string validation_source;
  // split -> count per class
  std::map<std::string, std::vector<int64_t>> counts;
  std::vector<ShardInfo> shards;
  // (relative path, reason) of source images left out.
  std::vector<std::pair<std::string, std::string>> skipped;

  int64_t Count(const std::string& split) const;
};

std::string ManifestToJson(const Manifest& m);
absl::StatusOr<Manifest> ManifestFromJson(const std::string& json);
absl::StatusOr<Manifest> ReadManifest(const std::string& dir);

// Options for WriteShards.
struct ShardWriterOptions {
  std::string out_dir;
  // Input size recorded in the manifest (and the stored size for kRgb8).
  int image_size = 256;
  RecordFormat format = RecordFormat::kEncoded;
  // A shard is closed when it reaches either limit (0 = no limit).
  int64_t max_records_per_shard = 0;
  int64_t max_bytes_per_shard = int64_t{64} << 20;
  int threads = 2;
  ImageLimits limits;
  // Called after each image with (done, total).
  std::function<void(int64_t, int64_t)> progress;
};

// Reads, checks (decodes) and writes every image of `dataset` into shards plus
// a manifest. Unreadable or undecodable images are listed in the manifest's
// `skipped` and left out. Fails if the output directory already has a manifest.
absl::StatusOr<Manifest> WriteShards(const ScannedDataset& dataset, const std::string& source_root,
                                     const ShardWriterOptions& options);

// Where one record lives.
struct RecordRef {
  uint32_t shard = 0;
  uint64_t offset = 0;  // of the record header in the shard file
  int32_t label = 0;
};

struct Record {
  int32_t label = 0;
  RecordFormat format = RecordFormat::kEncoded;
  int32_t width = 0;
  int32_t height = 0;
  std::string name;
  std::string payload;
};

// Encodes/decodes one record (header + body); exposed for tests.
std::string EncodeRecord(const Record& r);
absl::StatusOr<Record> DecodeRecordBody(const char* body, size_t size);

// An opened shard directory: manifest plus an index of every record.
// Read() is thread-safe (positional reads on shared descriptors).
class ShardSet {
 public:
  static absl::StatusOr<std::unique_ptr<ShardSet>> Open(const std::string& dir);
  ~ShardSet();
  ShardSet(const ShardSet&) = delete;
  ShardSet& operator=(const ShardSet&) = delete;

  const Manifest& manifest() const { return manifest_; }
  const std::string& dir() const { return dir_; }
  // Every record of a split, in shard order.
  std::vector<RecordRef> Records(const std::string& split) const;
  // Reads and checksums one record.
  absl::StatusOr<Record> Read(const RecordRef& ref) const;

 private:
  ShardSet(std::string dir, Manifest manifest) : dir_(std::move(dir)), manifest_(std::move(manifest)) {}

  const std::string dir_;
  const Manifest manifest_;
  std::vector<int> fds_;                      // one per shard, set in Open()
  std::vector<std::vector<RecordRef>> index_; // per shard
};

// Result of VerifyShards.
struct VerifyReport {
  int64_t shards_checked = 0;
  int64_t records_checked = 0;
  bool ok = true;
  // First problem found: shard file, byte offset of the record, reason.
  std::string bad_shard;
  uint64_t bad_offset = 0;
  std::string reason;
};

// Checks every record checksum, every shard checksum and count against the
// manifest. Returns an error only when the directory cannot be read at all.
absl::StatusOr<VerifyReport> VerifyShards(const std::string& dir);

}  // namespace dfc

#endif  // DFC_DATA_SHARDS_SHARD_FORMAT_H_
