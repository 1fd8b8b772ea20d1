#ifndef DFC_COMMON_STATUS_MACROS_H_
#define DFC_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

// Propagates a non-OK absl::Status to the caller.
#define DFC_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::absl::Status dfc_status_ = (expr);       \
    if (!dfc_status_.ok()) return dfc_status_; \
  } while (0)

#define DFC_CONCAT_INNER_(a, b) a##b
#define DFC_CONCAT_(a, b) DFC_CONCAT_INNER_(a, b)

// `lhs = value of expr` when expr (an absl::StatusOr) is OK, else returns its status.
#define DFC_ASSIGN_OR_RETURN(lhs, expr) \
  DFC_ASSIGN_OR_RETURN_IMPL_(DFC_CONCAT_(dfc_statusor_, __LINE__), lhs, expr)
#define DFC_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

#endif  // DFC_COMMON_STATUS_MACROS_H_
