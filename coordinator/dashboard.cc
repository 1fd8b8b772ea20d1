#include "coordinator/dashboard.h"

#include <deque>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/match.h"
#include "common/training_config.h"
#include "coordinator/dashboard_assets.h"

namespace dfc {
namespace {

constexpr size_t kNewestJobs = 200;

HttpResponse Json(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions o;
  o.always_print_primitive_fields = true;
  o.preserve_proto_field_names = true;
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(m, &out, o).ok()) return HttpResponse::Text(500, "json\n");
  return {200, "application/json", out};
}

HttpResponse Error(const absl::Status& st) {
  const int code = st.code() == absl::StatusCode::kNotFound ? 404 : 503;
  return HttpResponse::Text(code, std::string(st.message()) + "\n");
}

// Every page of summaries, keeping the newest kNewestJobs, newest first.
HttpResponse Jobs(Coordinator* c) {
  std::deque<v1::Job> newest;
  v1::ListJobsRequest req;
  req.set_page_size(1000);
  for (int page = 0; page < 100; ++page) {
    auto resp = c->ListJobs(req);
    if (!resp.ok()) return Error(resp.status());
    for (v1::Job& j : *resp->mutable_jobs()) {
      newest.push_back(std::move(j));
      if (newest.size() > kNewestJobs) newest.pop_front();
    }
    if (resp->next_page_token().empty()) break;
    req.set_page_token(resp->next_page_token());
  }
  v1::ListJobsResponse out;
  for (auto it = newest.rbegin(); it != newest.rend(); ++it) *out.add_jobs() = std::move(*it);
  return Json(out);
}

}  // namespace

HttpHandler DashboardHandler(Coordinator* coordinator) {
  return [coordinator](const HttpRequest& req) -> HttpResponse {
    const std::string& p = req.path;
    if (p == "/" || absl::StartsWith(p, "/jobs/")) return {200, "text/html; charset=utf-8", kDashboardHtml};
    if (p == "/app.js") return {200, "text/javascript; charset=utf-8", kDashboardJs};
    if (p == "/style.css") return {200, "text/css; charset=utf-8", kDashboardCss};
    if (p == "/api/jobs") return Jobs(coordinator);
    if (p == "/api/workers") return Json(coordinator->ListWorkers());
    if (absl::StartsWith(p, "/api/jobs/")) {
      auto job = coordinator->GetJob(p.substr(std::string("/api/jobs/").size()));
      return job.ok() ? Json(*job) : Error(job.status());
    }
    if (p == "/healthz") return HttpResponse::Text(200, "ok\n");
    return HttpResponse::Text(404, "not found: " + p + "\n");
  };
}

}  // namespace dfc
