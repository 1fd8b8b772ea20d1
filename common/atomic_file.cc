#include "common/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace dfc {
namespace {

// The error's code says whether another attempt could succeed: a missing
// path, a denied one or a read-only file system would meet the next attempt
// too (permanent: common/exit_codes.h); a full disk or quota may be freed
// meanwhile (RESOURCE_EXHAUSTED, retried); anything else is INTERNAL.
absl::Status ErrnoStatus(const std::string& what, const std::string& path) {
  int err = errno;
  std::string msg = absl::StrCat(what, " '", path, "': ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    case EROFS:
      return absl::FailedPreconditionError(msg);
    case ENOSPC:
    case EDQUOT:
      return absl::ResourceExhaustedError(msg);
    default:
      return absl::InternalError(msg);
  }
}

absl::Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("cannot write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteFileAtomically(const std::string& path, std::string_view contents) {
  const std::string tmp = absl::StrCat(path, ".tmp.", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot create", tmp);
  absl::Status st = WriteAll(fd, contents, tmp);
  if (st.ok() && ::fsync(fd) != 0) st = ErrnoStatus("cannot fsync", tmp);
  ::close(fd);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    st = ErrnoStatus("cannot rename onto", path);
  }
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  SyncParentDirectory(path);
  return absl::OkStatus();
}

void SyncParentDirectory(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

namespace {

// Opens `path` to read it, if it is a regular file (atomic_file.h). With
// O_NONBLOCK, so that a FIFO is refused instead of waited on; reads of a
// regular file are not affected.
absl::StatusOr<int> OpenRegularFile(const std::string& path, struct stat* sb) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return ErrnoStatus("cannot open", path);
  if (::fstat(fd, sb) != 0) {
    absl::Status st = ErrnoStatus("cannot stat", path);
    ::close(fd);
    return st;
  }
  if (!S_ISREG(sb->st_mode)) {
    ::close(fd);
    const char* kind = S_ISDIR(sb->st_mode)    ? "a directory"
                       : S_ISFIFO(sb->st_mode) ? "a FIFO"
                       : S_ISSOCK(sb->st_mode) ? "a socket"
                                               : "a device";
    return absl::InvalidArgumentError(absl::StrCat("'", path, "' is ", kind, ", not a regular file"));
  }
  return fd;
}

}  // namespace

bool FileStartsWith(const std::string& path, std::string_view magic) {
  struct stat sb;
  auto fd = OpenRegularFile(path, &sb);
  if (!fd.ok()) return false;
  std::string head(magic.size(), '\0');
  size_t done = 0;
  while (done < head.size()) {
    ssize_t n = ::read(*fd, head.data() + done, head.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(*fd);
  return done == magic.size() && head == magic;
}

absl::StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes) {
  struct stat sb;
  auto opened = OpenRegularFile(path, &sb);
  if (!opened.ok()) return opened.status();
  const int fd = *opened;
  if (static_cast<size_t>(sb.st_size) > max_bytes) {
    ::close(fd);
    return absl::ResourceExhaustedError(absl::StrCat("'", path, "' is ", sb.st_size,
                                                     " bytes, over the limit of ", max_bytes));
  }
  std::string out(static_cast<size_t>(sb.st_size), '\0');
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::read(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      absl::Status st = n == 0 ? absl::DataLossError(absl::StrCat("'", path, "' shrank while reading"))
                               : ErrnoStatus("cannot read", path);
      ::close(fd);
      return st;
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return out;
}

absl::StatusOr<int64_t> RegularFileSize(const std::string& path) {
  struct stat sb;
  auto fd = OpenRegularFile(path, &sb);
  if (!fd.ok()) return fd.status();
  ::close(*fd);
  return static_cast<int64_t>(sb.st_size);
}

absl::StatusOr<ReadOnlyFile> OpenToRead(const std::string& path) {
  struct stat sb;
  auto fd = OpenRegularFile(path, &sb);
  if (!fd.ok()) return fd.status();
  std::FILE* f = ::fdopen(*fd, "r");
  if (f == nullptr) {
    absl::Status st = ErrnoStatus("cannot open", path);
    ::close(*fd);
    return st;
  }
  return ReadOnlyFile(f, &std::fclose);
}

bool ReadBoundedLine(std::FILE* in, size_t max, std::string* line, bool* truncated) {
  line->clear();
  if (truncated != nullptr) *truncated = false;
  bool any = false;
  for (;;) {
    const int c = ::getc_unlocked(in);
    if (c == EOF) return any;
    any = true;
    if (c == '\n') return true;
    if (line->size() < max) {
      line->push_back(static_cast<char>(c));
    } else if (truncated != nullptr) {
      *truncated = true;
    }
  }
}

absl::StatusOr<std::string> ReadFirstLine(const std::string& path, size_t max) {
  auto f = OpenToRead(path);
  if (!f.ok()) return f.status();
  std::string line;
  ReadBoundedLine(f->get(), max, &line);
  return line;
}

absl::Status AppendLine(const std::string& path, std::string_view line) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot open", path);
  std::string buf(line);
  buf.push_back('\n');
  absl::Status st = WriteAll(fd, buf, path);
  if (st.ok() && ::fdatasync(fd) != 0) st = ErrnoStatus("cannot sync", path);
  ::close(fd);
  return st;
}

std::string FileStamp(const std::string& path) {
  struct stat sb {};
  if (::stat(path.c_str(), &sb) != 0) return "";
  return absl::StrCat(sb.st_dev, ":", sb.st_ino, ":", sb.st_size, ":", sb.st_mtim.tv_sec, ".", sb.st_mtim.tv_nsec);
}

}  // namespace dfc
