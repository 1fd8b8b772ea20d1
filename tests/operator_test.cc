// The operator's view, as an operator uses it: Prometheus /metrics of every
// binary scraped over HTTP during a real job (and by Debian's Prometheus
// server), and the coordinator's dashboard rendered by a real browser
// (Debian's chromium, headless). Real processes on loopback throughout.
#include <signal.h>

#include <chrono>
#include <cmath>
#include <regex>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/subprocess.h"
#include "tests/test_cluster.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

using testing::RunCommand;
using Cluster = testing::TestCluster;

struct HttpResult {
  int code = 0;
  std::string body;
};

// GET with curl (the operator's tool), e.g. extra = "-H 'Authorization: Bearer T'".
HttpResult Get(const std::string& url, const std::string& extra = "") {
  auto r = RunCommand("curl -sS -m 20 " + extra + " -w '\\n%{http_code}' '" + url + "'");
  HttpResult h;
  const auto nl = r.out.rfind('\n');
  if (nl == std::string::npos) return h;
  h.body = r.out.substr(0, nl);
  h.code = std::atoi(r.out.c_str() + nl + 1);
  return h;
}

std::string Scrape(const std::string& base) {
  HttpResult h = Get(base + "/metrics");
  EXPECT_EQ(h.code, 200) << base << ": " << h.body;
  return h.body;
}

// The value of one series ("name{labels}" exactly as exposed), NaN if absent.
double Value(const std::string& text, const std::string& series) {
  for (const std::string& line : testing::SplitLines(text)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 && line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return std::nan("");
}

// The sum of every series of `name` whose labels contain `label` (e.g. result="ok").
double Sum(const std::string& text, const std::string& name, const std::string& label) {
  double sum = 0;
  for (const std::string& line : testing::SplitLines(text)) {
    if (line.compare(0, name.size() + 1, name + "{") != 0 || line.find(label) == std::string::npos) continue;
    sum += std::stod(line.substr(line.rfind(' ') + 1));
  }
  return sum;
}

nlohmann::json Status(Cluster& c, const std::string& job) {
  auto r = RunCommand(c.Dfc("status --json " + job));
  return nlohmann::json::parse(r.out, nullptr, false);
}

// Polls until the job is RUNNING with at least `epochs` finished epochs.
nlohmann::json WaitRunningWithEpochs(Cluster& c, const std::string& job, int epochs, int seconds) {
  nlohmann::json j;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    j = Status(c, job);
    if (j.is_object() && j.value("state", "") == "RUNNING" && j.contains("epochs") &&
        static_cast<int>(j["epochs"].size()) >= epochs) {
      return j;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return j;
}

int ListedInState(Cluster& c, const std::string& state) {
  auto r = RunCommand(c.Dfc("list --json"));
  const auto j = nlohmann::json::parse(r.out, nullptr, false);
  int n = 0;
  if (j.is_object() && j.contains("jobs")) {
    for (const auto& job : j["jobs"]) n += job.value("state", "") == state;
  }
  return n;
}

std::string Submit(Cluster& c, const std::string& args) {
  auto r = RunCommand(c.Dfc("submit --json --model mesoinception4 --bn-momentum 0.9 " + args));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return nlohmann::json::parse(r.out, nullptr, false).value("job_id", "");
}

TEST(OperatorTest, MetricsOfEveryBinaryFollowARealJob) {
  Cluster::Options o;
  o.workers = 2;
  o.servers = 1;
  o.operator_endpoints = true;
  Cluster c(o);
  const std::string shards = testing::SyntheticShards(c.dir(), 96);

  std::string m = Scrape(c.coordinator_metrics());
  EXPECT_EQ(Value(m, "dfc_jobs_submitted_total"), 0) << m;
  EXPECT_EQ(Value(m, "dfc_workers{state=\"live\"}"), 2) << m;
  EXPECT_EQ(Value(m, "dfc_slots{device=\"cpu\"}"), 2) << m;
  EXPECT_EQ(Value(m, "dfc_slots_free{device=\"cpu\"}"), 2) << m;
  const std::string w0 = Scrape(c.worker_metrics(0));
  EXPECT_EQ(Value(w0, "dfc_worker_slots{device=\"cpu\"}"), 1) << w0;
  const double heartbeats0 = Value(w0, "dfc_worker_heartbeats_total{result=\"ok\"}");
  EXPECT_GE(heartbeats0, 1) << w0;

  const std::string job = Submit(c, "--data " + shards + " --world-size 2 --epochs 8 --batch-size 12");
  ASSERT_FALSE(job.empty());
  const nlohmann::json running = WaitRunningWithEpochs(c, job, 1, 240);
  ASSERT_EQ(running.value("state", ""), "RUNNING") << running.dump();

  // Mid-run: the gauges say what `dfc list` says; the running job's last epoch is exposed.
  m = Scrape(c.coordinator_metrics());
  EXPECT_EQ(Value(m, "dfc_jobs{state=\"running\"}"), ListedInState(c, "RUNNING")) << m;
  EXPECT_EQ(Value(m, "dfc_jobs{state=\"running\"}"), 1) << m;
  EXPECT_EQ(Value(m, "dfc_jobs_submitted_total"), 1) << m;
  EXPECT_EQ(Value(m, "dfc_job_start_delay_seconds_count"), 1) << m;
  EXPECT_EQ(Value(m, "dfc_slots_free{device=\"cpu\"}"), 0) << m;
  EXPECT_GE(Value(m, "dfc_job_epochs_done{job=\"" + job + "\"}"), 1) << m;
  EXPECT_GT(Value(m, "dfc_job_images_per_second{job=\"" + job + "\"}"), 0) << m;
  EXPECT_GT(Value(m, "dfc_job_step_seconds{job=\"" + job + "\",phase=\"compute\"}"), 0) << m;
  EXPECT_GE(Value(m, "dfc_job_step_seconds{job=\"" + job + "\",phase=\"data\"}"), 0) << m;
  EXPECT_GE(Value(m, "dfc_job_step_seconds{job=\"" + job + "\",phase=\"allreduce_wait\"}"), 0) << m;
  for (int w = 0; w < 2; ++w) {
    const std::string wm = Scrape(c.worker_metrics(w));
    EXPECT_EQ(Value(wm, "dfc_worker_ranks_running"), 1) << wm;
    EXPECT_EQ(Value(wm, "dfc_worker_ranks_started_total"), 1) << wm;
    EXPECT_EQ(Value(wm, "dfc_worker_coordinator_reachable"), 1) << wm;
  }
  EXPECT_GT(Value(Scrape(c.worker_metrics(0)), "dfc_worker_heartbeats_total{result=\"ok\"}"), heartbeats0);

  auto watch = RunCommand(c.Dfc("watch --timeout 300 " + job));
  ASSERT_EQ(watch.exit_code, 0) << watch.out << watch.err;
  m = Scrape(c.coordinator_metrics());
  EXPECT_EQ(Value(m, "dfc_jobs{state=\"succeeded\"}"), ListedInState(c, "SUCCEEDED")) << m;
  EXPECT_EQ(Value(m, "dfc_jobs{state=\"succeeded\"}"), 1) << m;
  EXPECT_EQ(Value(m, "dfc_jobs{state=\"running\"}"), 0) << m;
  EXPECT_EQ(Value(m, "dfc_jobs_finished_total{state=\"succeeded\"}"), 1) << m;
  EXPECT_EQ(Value(m, "dfc_queue_length"), 0) << m;
  EXPECT_EQ(Value(m, "dfc_slots_free{device=\"cpu\"}"), 2) << m;
  EXPECT_TRUE(std::isnan(Value(m, "dfc_job_images_per_second{job=\"" + job + "\"}"))) << "a finished job stays exposed";
  const std::string wm = Scrape(c.worker_metrics(1));
  EXPECT_EQ(Value(wm, "dfc_worker_ranks_exited_total{result=\"succeeded\"}"), 1) << wm;
  EXPECT_EQ(Value(wm, "dfc_worker_ranks_running"), 0) << wm;

  // The evaluation tier: every image counted once, with its batch, queue wait and latency.
  std::string s = Scrape(c.server_metrics(0));
  EXPECT_EQ(Value(s, "dfc_models_loaded"), 0) << s;
  EXPECT_EQ(Sum(s, "dfc_eval_images_total", "result=\"ok\""), 0) << s;
  auto eval = RunCommand(c.Dfc("evaluate --json --server " + c.server_address(0) + " --job " + job + " " +
                               c.dir().Join("syn")));
  ASSERT_EQ(eval.exit_code, 0) << eval.err;
  const int images = nlohmann::json::parse(eval.out)["count"].get<int>();
  ASSERT_EQ(images, 96) << eval.out;
  s = Scrape(c.server_metrics(0));
  EXPECT_EQ(Sum(s, "dfc_eval_images_total", "result=\"ok\""), images) << s;
  EXPECT_GE(Sum(s, "dfc_eval_requests_total", "result=\"ok\""), 1) << s;
  EXPECT_EQ(Value(s, "dfc_eval_batch_size_sum"), images) << s;
  EXPECT_GE(Value(s, "dfc_eval_batch_size_count"), 1) << s;
  EXPECT_EQ(Value(s, "dfc_eval_queue_wait_seconds_count"), images) << s;
  EXPECT_EQ(Value(s, "dfc_eval_latency_seconds_count"), images) << s;
  EXPECT_GT(Value(s, "dfc_eval_latency_seconds_sum"), 0) << s;
  EXPECT_EQ(Value(s, "dfc_models_loaded"), 1) << s;
  // An image decoder that dies (SIGKILL while idle) is replaced, counted and
  // logged; no image fails.
  EXPECT_EQ(Value(s, "dfc_eval_decoders_replaced_total"), 0) << s;
  const std::vector<pid_t> decoders = testing::ChildPids(c.server(0).pid(), "dfc-decode");
  ASSERT_FALSE(decoders.empty()) << "no dfc-decode process under the server";
  const pid_t decoder = decoders[0];
  ASSERT_EQ(::kill(decoder, SIGKILL), 0);
  auto again = RunCommand(c.Dfc("evaluate --json --server " + c.server_address(0) + " --job " + job + " " +
                                c.dir().Join("syn")));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_EQ(nlohmann::json::parse(again.out)["errors"].get<int>(), 0) << again.out;
  s = Scrape(c.server_metrics(0));
  EXPECT_EQ(Value(s, "dfc_eval_decoders_replaced_total"), 1) << s;
  EXPECT_EQ(Sum(s, "dfc_eval_images_total", "result=\"ok\""), 2 * images) << s;
  const std::string server_log = c.processes().Log("server-0.log");
  EXPECT_NE(server_log.find("dfc-server: an image decoder (pid " + std::to_string(decoder) +
                            ") had ended while idle (SIGKILL); replaced"),
            std::string::npos)
      << server_log;
  // A model that does not exist is counted without its (client-chosen) name.
  auto bad = RunCommand(c.Dfc("evaluate --server " + c.server_address(0) + " --model no-such-model " +
                              c.dir().Join("syn")));
  EXPECT_NE(bad.exit_code, 0);
  s = Scrape(c.server_metrics(0));
  EXPECT_GE(Value(s, "dfc_eval_requests_total{model=\"unresolved\",result=\"error\"}"), 1) << s;
  EXPECT_EQ(s.find("no-such-model"), std::string::npos) << s;
  // The endpoints are read-only and say where the metrics are.
  EXPECT_EQ(Get(c.coordinator_metrics() + "/metrics", "-X POST -d x").code, 405);
  EXPECT_EQ(Get(c.coordinator_metrics() + "/nothing").code, 404);
}

TEST(OperatorTest, PrometheusServerScrapesEveryTarget) {
  Cluster::Options o;
  o.workers = 1;
  o.servers = 1;
  o.operator_endpoints = true;
  Cluster c(o);
  auto host = [](const std::string& url) { return url.substr(std::string("http://").size()); };
  testing::WriteFileOrDie(c.dir().Join("prometheus.yml"),
                          "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                          "scrape_configs:\n  - job_name: dfc\n    static_configs:\n      - targets: ['" +
                              host(c.coordinator_metrics()) + "', '" + host(c.worker_metrics(0)) + "', '" +
                              host(c.server_metrics(0)) + "']\n");
  const int port = PickFreePort();
  const std::string api = "http://127.0.0.1:" + std::to_string(port) + "/api/v1";
  c.processes().Start({"/usr/bin/prometheus", "--config.file=" + c.dir().Join("prometheus.yml"),
                       "--storage.tsdb.path=" + c.dir().Join("tsdb"),
                       "--web.listen-address=127.0.0.1:" + std::to_string(port)},
                      "prometheus.log");
  nlohmann::json targets;
  int up = 0;
  for (int i = 0; i < 120 && up < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    targets = nlohmann::json::parse(Get(api + "/targets").body, nullptr, false);
    if (!targets.is_object() || !targets.contains("data")) continue;
    up = 0;
    for (const auto& t : targets["data"]["activeTargets"]) up += t.value("health", "") == "up";
  }
  EXPECT_EQ(up, 3) << targets.dump(1) << c.processes().Log("prometheus.log");
  // A DFC series through the query API, with the value the coordinator has.
  nlohmann::json q;
  for (int i = 0; i < 40; ++i) {
    q = nlohmann::json::parse(Get(api + "/query", "-G --data-urlencode 'query=dfc_workers{state=\"live\"}'").body,
                              nullptr, false);
    if (q.is_object() && q.value("status", "") == "success" && !q["data"]["result"].empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  ASSERT_TRUE(q.is_object() && !q["data"]["result"].empty()) << q.dump(1);
  EXPECT_EQ(q["data"]["result"][0]["value"][1], "1") << q.dump(1);
  q = nlohmann::json::parse(Get(api + "/query", "-G --data-urlencode 'query=dfc_worker_slots{device=\"cpu\"}'").body,
                            nullptr, false);
  ASSERT_TRUE(q.is_object() && !q["data"]["result"].empty()) << q.dump(1);
  EXPECT_EQ(q["data"]["result"][0]["value"][1], "1") << q.dump(1);
}

// Headless chromium's rendered DOM of a page (after its scripts ran).
std::string RenderedDom(const std::string& url) {
  auto r = RunCommand("timeout 90 chromium --headless --no-sandbox --disable-gpu --disable-dev-shm-usage "
                      "--no-first-run --user-data-dir=$(mktemp -d) --virtual-time-budget=6000 --dump-dom '" +
                      url + "' 2>/dev/null");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
}

int Count(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

TEST(OperatorTest, DashboardInChromiumShowsARunningJobsCurvesEventsAndWorkers) {
  Cluster::Options o;
  o.workers = 1;
  o.operator_endpoints = true;
  Cluster c(o);
  const std::string shards = testing::SyntheticShards(c.dir(), 96);
  const std::string job = Submit(c, "--data " + shards + " --world-size 1 --epochs 30 --batch-size 12");
  ASSERT_FALSE(job.empty());
  const nlohmann::json before = WaitRunningWithEpochs(c, job, 2, 240);
  ASSERT_EQ(before.value("state", ""), "RUNNING") << before.dump();

  const std::string dom = RenderedDom(c.dashboard() + "/jobs/" + job);
  const nlohmann::json after = Status(c, job);
  EXPECT_NE(dom.find("<span id=\"job-id\">" + job + "</span>"), std::string::npos) << dom;
  EXPECT_NE(dom.find("data-state=\"RUNNING\""), std::string::npos) << dom;
  // The loss curve has one point per finished epoch (epochs may finish while the page loads).
  std::smatch m;
  ASSERT_TRUE(std::regex_search(dom, m, std::regex("data-metric=\"loss\" data-points=\"([0-9]+)\""))) << dom;
  const int points = std::stoi(m[1]);
  EXPECT_GE(points, static_cast<int>(before["epochs"].size()));
  EXPECT_LE(points, static_cast<int>(after["epochs"].size()));
  EXPECT_EQ(Count(dom, "class=\"point s0\" data-series=\"loss\""), points) << dom;
  EXPECT_EQ(Count(dom, "class=\"point s0\" data-series=\"val_auc\""), points) << dom;
  // The timeline and where the job runs.
  EXPECT_NE(dom.find("data-kind=\"submitted\""), std::string::npos) << dom;
  EXPECT_NE(dom.find("data-kind=\"running\""), std::string::npos) << dom;

  const std::string overview = RenderedDom(c.dashboard() + "/");
  EXPECT_NE(overview.find("data-job=\"" + job + "\""), std::string::npos) << overview;
  EXPECT_NE(overview.find("id=\"workers\""), std::string::npos) << overview;
  EXPECT_NE(overview.find("class=\"state-live\">live<"), std::string::npos) << overview;

  // A failed job's page shows why.
  ASSERT_EQ(RunCommand(c.Dfc("cancel " + job)).exit_code, 0);
  const std::string cancelled = RenderedDom(c.dashboard() + "/jobs/" + job);
  EXPECT_NE(cancelled.find("data-state=\"CANCELLED\""), std::string::npos) << cancelled;
  EXPECT_NE(cancelled.find("id=\"reason\""), std::string::npos) << cancelled;
  // The JSON it polls, and a job that does not exist.
  EXPECT_NE(Get(c.dashboard() + "/api/jobs").body.find(job), std::string::npos);
  EXPECT_EQ(Get(c.dashboard() + "/api/jobs/nope").code, 404);

  // --recipe notebook: the epoch-count selection has its own row and curves;
  // the run's curves are the retraining's.
  // The overview says a job is still selecting: its rank is stopped (SIGSTOP)
  // after a selection epoch, so that the page is rendered in that state.
  const std::string nb = Submit(c, "--data " + shards + " --world-size 1 --epochs 3 --batch-size 12 --recipe notebook");
  ASSERT_FALSE(nb.empty());
  nlohmann::json selecting;
  for (int i = 0; i < 2400; ++i) {
    selecting = Status(c, nb);
    if (selecting.is_object() && selecting["selection_epochs"].size() >= 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  const pid_t rank = c.RankPid(nb, 1, 0);
  ASSERT_GT(rank, 0);
  ASSERT_EQ(::kill(rank, SIGSTOP), 0);
  selecting = Status(c, nb);
  const size_t selected = selecting["selection_epochs"].size();
  ASSERT_GE(selected, 1u) << selecting.dump();
  ASSERT_TRUE(selecting["epochs"].empty()) << selecting.dump();
  const std::string listing = RenderedDom(c.dashboard() + "/");
  // Prometheus sees the selection too: its epochs, and the throughput of its
  // last epoch rather than a zero while the run has none.
  const std::string scraped = Scrape(c.coordinator_metrics());
  ASSERT_EQ(::kill(rank, SIGCONT), 0);
  EXPECT_EQ(Value(scraped, "dfc_job_selection_epochs_done{job=\"" + nb + "\"}"), static_cast<double>(selected))
      << scraped;
  EXPECT_EQ(Value(scraped, "dfc_job_epochs_done{job=\"" + nb + "\"}"), 0) << scraped;
  EXPECT_GT(Value(scraped, "dfc_job_images_per_second{job=\"" + nb + "\"}"), 0) << scraped;
  EXPECT_GT(Value(scraped, "dfc_job_step_seconds{job=\"" + nb + "\",phase=\"compute\"}"), 0) << scraped;
  EXPECT_NE(listing.find("<span class=\"selecting\">selection <span><span class=\"bar\" title=\"" +
                         std::to_string(selected) + " of 3 epochs\">"),
            std::string::npos) << listing;
  ASSERT_EQ(RunCommand(c.Dfc("watch --timeout 240 " + nb)).exit_code, 0);
  const nlohmann::json finished = Status(c, nb);
  ASSERT_EQ(finished["selection_epochs"].size(), 3u) << finished.dump();
  const size_t retrained = finished["epochs"].size();
  ASSERT_GE(retrained, 1u) << finished.dump();
  const std::string page = RenderedDom(c.dashboard() + "/jobs/" + nb);
  EXPECT_NE(page.find("data-metric=\"sel-loss\" data-points=\"3\""), std::string::npos) << page;
  EXPECT_NE(page.find("data-metric=\"loss\" data-points=\"" + std::to_string(retrained) + "\""), std::string::npos)
      << page;
  EXPECT_NE(page.find("<dd id=\"selection\"><span><span class=\"bar\" title=\"3 of 3 epochs\">"),
            std::string::npos) << page;
  EXPECT_NE(page.find("title=\"" + std::to_string(retrained) + " of " + std::to_string(retrained) + " epochs\""),
            std::string::npos) << page;
}

}  // namespace
}  // namespace dfc
