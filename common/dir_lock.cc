#include "common/dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"

namespace dfc {

absl::StatusOr<int> LockDirectory(const std::string& dir, const std::string& file, const std::string& flag,
                                  const std::string& program, const std::string& why) {
  const std::string path = (std::filesystem::path(dir) / file).string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return absl::PermissionDeniedError(absl::StrCat(flag, ": cannot open ", path, ": ", std::strerror(errno)));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    char holder[256] = {0};
    const ssize_t n = ::pread(fd, holder, sizeof(holder) - 1, 0);
    ::close(fd);
    std::string who = n > 0 ? std::string(holder, static_cast<size_t>(n)) : "unknown process";
    while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
    return absl::FailedPreconditionError(
        absl::StrCat(flag, ": '", dir, "' is in use by another ", program, " (", who, "); ", why));
  }
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  const std::string me = absl::StrCat("pid ", ::getpid(), " on ", host, "\n");
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    const int err = errno;
    ::close(fd);
    return absl::PermissionDeniedError(absl::StrCat(flag, ": cannot write ", path, ": ", std::strerror(err)));
  }
  return fd;
}

}  // namespace dfc
