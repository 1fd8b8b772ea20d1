#ifndef DFC_COMMON_EXIT_CODES_H_
#define DFC_COMMON_EXIT_CODES_H_

#include "absl/status/status.h"

namespace dfc {

// How a rank process (dfc-worker rank) ends, as its worker reports it to the
// coordinator: 0 done, 1 a transient failure (retried while the job has
// restarts left), kRankExitPermanent an error that another attempt would
// meet again (bad data, bad weights, a bad option): the job fails at once.
inline constexpr int kRankExitTransient = 1;
inline constexpr int kRankExitPermanent = 3;

// Errors in what the job was given rather than in the run: a corrupt or
// missing shard (DATA_LOSS, NOT_FOUND), invalid weights or options
// (INVALID_ARGUMENT, FAILED_PRECONDITION), an unreadable path
// (PERMISSION_DENIED), a value out of range.
inline bool IsPermanentError(const absl::Status& st) {
  switch (st.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kOutOfRange:
      return true;
    default:
      return false;
  }
}

}  // namespace dfc

#endif  // DFC_COMMON_EXIT_CODES_H_
