#ifndef DFC_COORDINATOR_DASHBOARD_ASSETS_H_
#define DFC_COORDINATOR_DASHBOARD_ASSETS_H_

namespace dfc {
// coordinator/dashboard/{index.html,app.js,style.css}, embedded at build time.
extern const char* const kDashboardHtml;
extern const char* const kDashboardJs;
extern const char* const kDashboardCss;
}  // namespace dfc

#endif  // DFC_COORDINATOR_DASHBOARD_ASSETS_H_
