#include "common/record_file.h"

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dfc {

std::string EncodeRecord(std::string_view payload) {
  const auto n = static_cast<uint32_t>(payload.size());
  std::string out;
  out.reserve(4 + payload.size());
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out.append(payload);
  return out;
}

absl::Status AppendRecord(int fd, std::string_view payload) {
  const std::string record = EncodeRecord(payload);
  size_t done = 0;
  while (done < record.size()) {
    const ssize_t n = ::write(fd, record.data() + done, record.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return absl::InternalError(absl::StrCat("cannot append a record: ", std::strerror(errno)));
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<FileRecord>> DecodeRecords(std::string_view bytes, size_t max_record) {
  std::vector<FileRecord> out;
  size_t at = 0;
  while (bytes.size() - at >= 4) {
    uint32_t n = 0;
    for (int i = 0; i < 4; ++i) n |= static_cast<uint32_t>(static_cast<unsigned char>(bytes[at + i])) << (8 * i);
    if (n > max_record) {
      return absl::DataLossError(
          absl::StrCat("record at offset ", at, " claims ", n, " bytes (at most ", max_record, ")"));
    }
    if (bytes.size() - at - 4 < n) break;  // still being written
    out.push_back(FileRecord{std::string(bytes.substr(at + 4, n)), at + 4 + n});
    at += 4 + n;
  }
  return out;
}

}  // namespace dfc
