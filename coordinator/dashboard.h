#ifndef DFC_COORDINATOR_DASHBOARD_H_
#define DFC_COORDINATOR_DASHBOARD_H_

#include "common/http/http_server.h"
#include "coordinator/coordinator.h"

namespace dfc {

// The coordinator's read-only web dashboard: the page and its script
// (compiled into the binary; nothing from a CDN) on / and /jobs/ID, and the
// JSON they poll: /api/jobs (newest first), /api/jobs/ID, /api/workers.
HttpHandler DashboardHandler(Coordinator* coordinator);

}  // namespace dfc

#endif  // DFC_COORDINATOR_DASHBOARD_H_
