#ifndef DFC_COMMON_HTTP_METRICS_ENDPOINT_H_
#define DFC_COMMON_HTTP_METRICS_ENDPOINT_H_

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <prometheus/collectable.h>
#include <prometheus/metric_family.h>

#include "absl/status/statusor.h"
#include "common/http/http_server.h"

namespace CLI {
class App;
}

namespace dfc {

// --metrics-listen and its HTTPS files, the same on every long-running binary.
struct MetricsFlags {
  std::string listen;  // empty: no endpoint
  std::string tls_cert, tls_key;
  void Add(CLI::App& app);
};

// The TLS files a process uses, by flag ("--tls-cert" -> path; empty paths
// are left out).
using TlsFileFlags = std::vector<std::pair<std::string, std::string>>;

// Serves Prometheus' text format on /metrics (and a pointer to it on /) of
// flags.listen, from every collectable (read at each scrape), and the
// expiry of `tls_files` and of its own certificate (CertificateExpiryMetrics).
// nullptr when the flag is empty. Binaries whose gRPC port has a
// certificate pass it as the default for HTTPS.
absl::StatusOr<std::unique_ptr<HttpServer>> StartMetricsEndpoint(
    MetricsFlags flags, std::vector<std::shared_ptr<prometheus::Collectable>> collectables,
    const TlsFileFlags& tls_files = {}, const std::string& default_cert = "", const std::string& default_key = "");

// dfc_tls_certificate_expiry_timestamp_seconds{flag, file}: when the first
// certificate in each file expires (Unix seconds; a CA bundle's or a chain's
// earliest), read again when the file changes, so that an alert on it minus
// time() fires before a certificate nobody renewed stops the cluster. A file
// that cannot be read or holds no certificate has no sample.
std::shared_ptr<prometheus::Collectable> CertificateExpiryMetrics(TlsFileFlags files);

// Building blocks of collectables that compute their values at scrape time.
prometheus::MetricFamily GaugeFamily(const std::string& name, const std::string& help);
void AddGauge(prometheus::MetricFamily& family, double value,
              std::vector<prometheus::ClientMetric::Label> labels = {});

// The text a scrape returns now (tests and the dashboard).
std::string SerializeMetrics(const std::vector<std::shared_ptr<prometheus::Collectable>>& collectables);

}  // namespace dfc

#endif  // DFC_COMMON_HTTP_METRICS_ENDPOINT_H_
