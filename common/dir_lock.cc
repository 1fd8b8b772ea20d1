#include "common/dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace dfc {

std::string ThisProcess() {
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  return absl::StrCat("pid ", ::getpid(), " on ", host);
}

absl::StatusOr<int> TryLockFile(const std::string& path, LockMode mode, const std::string& me) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd < 0) return absl::PermissionDeniedError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  if (::flock(fd, (mode == LockMode::kShared ? LOCK_SH : LOCK_EX) | LOCK_NB) != 0) {
    const int err = errno;
    if (err != EWOULDBLOCK) {
      ::close(fd);
      return absl::UnimplementedError(absl::StrCat("cannot lock ", path, ": ", std::strerror(err)));
    }
    char holder[256] = {0};
    const ssize_t n = ::pread(fd, holder, sizeof(holder) - 1, 0);
    ::close(fd);
    std::string who = n > 0 ? std::string(holder, static_cast<size_t>(n)) : "";
    if (const size_t nl = who.find('\n'); nl != std::string::npos) who.resize(nl);
    // Its holders write printable ASCII; anything else (a file a rank wrote)
    // must not reach a terminal or a gRPC status as it is.
    for (char& ch : who) {
      if (ch < 0x20 || ch > 0x7e) ch = '?';
    }
    return absl::FailedPreconditionError(who.empty() ? "unknown process" : who);
  }
  // Shared holders each write themselves: the file names the latest.
  const std::string line = me + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, line.data(), line.size(), 0) != static_cast<ssize_t>(line.size())) {
    const int err = errno;
    ::close(fd);
    return absl::PermissionDeniedError(absl::StrCat("cannot write ", path, ": ", std::strerror(err)));
  }
  return fd;
}

absl::StatusOr<int> LockDirectory(const std::string& dir, const std::string& file, const std::string& flag,
                                  const std::string& program, const std::string& why) {
  auto fd = TryLockFile((std::filesystem::path(dir) / file).string(), LockMode::kExclusive, ThisProcess());
  if (fd.ok()) return fd;
  if (fd.status().code() == absl::StatusCode::kFailedPrecondition) {
    return absl::FailedPreconditionError(
        absl::StrCat(flag, ": '", dir, "' is in use by another ", program, " (", fd.status().message(), "); ", why));
  }
  return absl::Status(fd.status().code(), absl::StrCat(flag, ": ", fd.status().message()));
}

}  // namespace dfc
