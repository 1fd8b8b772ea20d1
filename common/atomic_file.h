#ifndef DFC_COMMON_ATOMIC_FILE_H_
#define DFC_COMMON_ATOMIC_FILE_H_

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dfc {

// Writes `contents` to `path` so that readers see either the old file or the
// whole new one: write to a temporary file beside it, fsync, rename, fsync dir.
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);

// Flushes the directory holding `path` (a rename into it survives a crash).
void SyncParentDirectory(const std::string& path);

// Every reader below opens regular files only: a FIFO, device, socket or
// directory is INVALID_ARGUMENT naming it. Opening a FIFO would wait for a
// writer, for ever when none comes (`dfc predict` given one hung, and so
// would a coordinator or worker reading a run-directory file that a rank had
// replaced by one); a device has no size to bound the read by.

// Reads a whole file; NOT_FOUND when it does not exist, RESOURCE_EXHAUSTED when
// it is larger than `max_bytes`.
absl::StatusOr<std::string> ReadFile(const std::string& path,
                                     size_t max_bytes = size_t{1} << 31);

// Whether the file at `path` begins with `magic` (false when it cannot be read).
bool FileStartsWith(const std::string& path, std::string_view magic);

// The size of a regular file.
absl::StatusOr<int64_t> RegularFileSize(const std::string& path);

// A file opened to read, closed with the pointer.
using ReadOnlyFile = std::unique_ptr<std::FILE, int (*)(std::FILE*)>;
absl::StatusOr<ReadOnlyFile> OpenToRead(const std::string& path);

// Reads the next line of `in` (without its '\n') into `line`, keeping at most
// `max` bytes of it and skipping the rest (`*truncated` says so): a file
// another process wrote cannot make the reader hold a line of gigabytes.
// False at the end of the input.
bool ReadBoundedLine(std::FILE* in, size_t max, std::string* line, bool* truncated = nullptr);

// The first line of a regular file (without its '\n'), at most `max` bytes
// of it; "" for an empty file.
absl::StatusOr<std::string> ReadFirstLine(const std::string& path, size_t max);

// What changes when a file is replaced or rewritten (device, inode, size,
// modification time, following symlinks); "" when it cannot be stat'ed.
// Cheap enough to look at on every use of a file read once and kept.
std::string FileStamp(const std::string& path);

// Appends one line (a '\n' is added) and flushes it to disk.
absl::Status AppendLine(const std::string& path, std::string_view line);

}  // namespace dfc

#endif  // DFC_COMMON_ATOMIC_FILE_H_
