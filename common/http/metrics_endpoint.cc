#include "common/http/metrics_endpoint.h"

#include <openssl/asn1.h>

#include <ctime>
#include <map>
#include <sstream>

#include <CLI/CLI.hpp>
#include <prometheus/text_serializer.h>

#include "absl/synchronization/mutex.h"
#include "common/atomic_file.h"
#include "common/rpc/tls_files.h"

namespace dfc {
namespace {

// The earliest notAfter of the certificates in `path` (Unix seconds); -1
// when it cannot be read or holds none.
double EarliestExpiry(const std::string& path) {
  auto pem = ReadPemFile(path);
  if (!pem.ok()) return -1;
  double earliest = -1;
  for (const X509Ptr& cert : ParseCertificates(*pem)) {
    std::tm tm{};
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert.get()), &tm) == 1) {
      const double at = static_cast<double>(::timegm(&tm));
      if (earliest < 0 || at < earliest) earliest = at;
    }
  }
  return earliest;
}

class CertificateExpiry final : public prometheus::Collectable {
 public:
  explicit CertificateExpiry(TlsFileFlags files) : files_(std::move(files)) {}

  std::vector<prometheus::MetricFamily> Collect() const override {
    prometheus::MetricFamily f = GaugeFamily(
        "dfc_tls_certificate_expiry_timestamp_seconds",
        "When the first certificate in a TLS file this process uses expires (Unix seconds), as the file is now");
    absl::MutexLock lock(&mu_);
    for (const auto& [flag, path] : files_) {
      Seen& seen = seen_[path];
      const std::string stamp = FileStamp(path);
      if (stamp != seen.stamp || stamp.empty()) {
        seen.stamp = stamp;
        seen.expiry = EarliestExpiry(path);
      }
      if (seen.expiry >= 0) AddGauge(f, seen.expiry, {{"flag", flag}, {"file", path}});
    }
    return {std::move(f)};
  }

 private:
  struct Seen {
    std::string stamp;
    double expiry = -1;
  };
  const TlsFileFlags files_;
  mutable absl::Mutex mu_;
  mutable std::map<std::string, Seen> seen_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::shared_ptr<prometheus::Collectable> CertificateExpiryMetrics(TlsFileFlags files) {
  TlsFileFlags given;
  for (auto& [flag, path] : files) {
    if (!path.empty()) given.emplace_back(std::move(flag), std::move(path));
  }
  return std::make_shared<CertificateExpiry>(std::move(given));
}

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
    const TlsFileFlags& tls_files, const std::string& default_cert, const std::string& default_key) {
  if (flags.listen.empty()) return std::unique_ptr<HttpServer>();
  TlsFileFlags expiring = tls_files;
  expiring.emplace_back("--metrics-tls-cert", flags.tls_cert);
  collectables.push_back(CertificateExpiryMetrics(std::move(expiring)));
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
