#ifndef DFC_COMMON_DIR_LOCK_H_
#define DFC_COMMON_DIR_LOCK_H_

#include <string>

#include "absl/status/statusor.h"

namespace dfc {

enum class LockMode { kExclusive, kShared };

// Takes a flock on PATH (created if missing) without waiting, for as long as
// the returned descriptor is open (the kernel drops it when the process
// goes, however it goes), and writes "ME\n" there for whoever is refused.
// Refused (another process holds it exclusively, or shared where `mode` is
// exclusive): FAILED_PRECONDITION whose message is the first line the holder
// wrote, anything but printable ASCII as '?' ("unknown process" when
// nothing). A flock that fails otherwise (ENOLCK:
// an NFSv3 server without a lock daemon): UNIMPLEMENTED naming PATH and the
// error. PATH that cannot be opened or written: PERMISSION_DENIED.
absl::StatusOr<int> TryLockFile(const std::string& path, LockMode mode, const std::string& me);

// Takes an exclusive TryLockFile on DIR/FILE for the rest of the process's
// life, writing "pid P on HOST" there. When another process holds it:
// FAILED_PRECONDITION "FLAG: 'DIR' is in use by another PROGRAM (pid P on
// HOST); WHY". Used by the coordinator on its --state and by the worker on
// its --work-dir: a second instance on one directory is refused instead of
// running beside the first.
absl::StatusOr<int> LockDirectory(const std::string& dir, const std::string& file, const std::string& flag,
                                  const std::string& program, const std::string& why);

// "pid P on HOST": this process, as the lock files name their holders.
std::string ThisProcess();

}  // namespace dfc

#endif  // DFC_COMMON_DIR_LOCK_H_
