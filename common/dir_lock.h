#ifndef DFC_COMMON_DIR_LOCK_H_
#define DFC_COMMON_DIR_LOCK_H_

#include <string>

#include "absl/status/statusor.h"

namespace dfc {

// Takes an exclusive flock on DIR/FILE for the rest of the process's life
// (the returned descriptor holds it; the kernel drops it when the process
// goes, however it goes) and writes "pid P on HOST" there. When another
// process holds it: FAILED_PRECONDITION "FLAG: 'DIR' is in use by another
// PROGRAM (pid P on HOST); WHY". Used by the coordinator on its --state and
// by the worker on its --work-dir: a second instance on one directory is
// refused instead of running beside the first.
absl::StatusOr<int> LockDirectory(const std::string& dir, const std::string& file, const std::string& flag,
                                  const std::string& program, const std::string& why);

}  // namespace dfc

#endif  // DFC_COMMON_DIR_LOCK_H_
