#ifndef DFC_COMMON_RECORD_FILE_H_
#define DFC_COMMON_RECORD_FILE_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dfc {

// A file of records that one process appends and another reads as they
// come (a rank's reports, which its worker forwards): each record is a
// 4-byte little-endian length and that many bytes.

// One record: its length, then `payload`.
std::string EncodeRecord(std::string_view payload);

// Appends one record to the file open at `fd` (O_APPEND) in one write.
absl::Status AppendRecord(int fd, std::string_view payload);

struct FileRecord {
  std::string payload;
  size_t end = 0;  // the offset in the decoded bytes just past this record
};

// The complete records at the start of `bytes`; a partial last record is
// left for a later read. DATA_LOSS names the offset when a length is over
// `max_record` (not a record file, or damaged: nothing after it can be trusted).
absl::StatusOr<std::vector<FileRecord>> DecodeRecords(std::string_view bytes, size_t max_record);

}  // namespace dfc

#endif  // DFC_COMMON_RECORD_FILE_H_
