#include "common/http/metrics_endpoint.h"

#include <sstream>

#include <CLI/CLI.hpp>
#include <prometheus/text_serializer.h>

namespace dfc {

void MetricsFlags::Add(CLI::App& app) {
  app.add_option("--metrics-listen", listen,
                 "Serve Prometheus metrics on HOST:PORT/metrics (off when empty; no token: bind it where only "
                 "your Prometheus reaches)");
  app.add_option("--metrics-tls-cert", tls_cert, "Certificate (PEM) for HTTPS on --metrics-listen");
  app.add_option("--metrics-tls-key", tls_key, "Its key (PEM)");
}

std::string SerializeMetrics(const std::vector<std::shared_ptr<prometheus::Collectable>>& collectables) {
  std::vector<prometheus::MetricFamily> families;
  for (const auto& c : collectables) {
    auto f = c->Collect();
    families.insert(families.end(), std::make_move_iterator(f.begin()), std::make_move_iterator(f.end()));
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, families);
  return out.str();
}

absl::StatusOr<std::unique_ptr<HttpServer>> StartMetricsEndpoint(
    MetricsFlags flags, std::vector<std::shared_ptr<prometheus::Collectable>> collectables,
    const std::string& default_cert, const std::string& default_key) {
  if (flags.listen.empty()) return std::unique_ptr<HttpServer>();
  HttpOptions o;
  o.listen = flags.listen;
  o.tls_cert = flags.tls_cert.empty() ? default_cert : flags.tls_cert;
  o.tls_key = flags.tls_key.empty() ? default_key : flags.tls_key;
  o.threads = 2;
  o.name = "--metrics-listen";
  return HttpServer::Start(o, [collectables = std::move(collectables)](const HttpRequest& req) {
    if (req.path == "/metrics") {
      return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", SerializeMetrics(collectables)};
    }
    if (req.path == "/") return HttpResponse::Text(200, "DFC metrics: /metrics\n");
    return HttpResponse::Text(404, "not found: " + req.path + " (metrics are on /metrics)\n");
  });
}

prometheus::MetricFamily GaugeFamily(const std::string& name, const std::string& help) {
  prometheus::MetricFamily f;
  f.name = name;
  f.help = help;
  f.type = prometheus::MetricType::Gauge;
  return f;
}

void AddGauge(prometheus::MetricFamily& family, double value, std::vector<prometheus::ClientMetric::Label> labels) {
  prometheus::ClientMetric m;
  m.label = std::move(labels);
  m.gauge.value = value;
  family.metric.push_back(std::move(m));
}

}  // namespace dfc
