#ifndef DFC_COMMON_HTTP_HTTP_SERVER_H_
#define DFC_COMMON_HTTP_HTTP_SERVER_H_

#include <functional>
#include <map>
#include <thread>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/rpc/bearer_token.h"

namespace httplib {
class Server;
}

namespace dfc {

class CertificateFiles;

// A small read-only HTTP(S) server (cpp-httplib) for the operator's endpoints:
// Prometheus /metrics and the coordinator's dashboard. GET and HEAD only,
// bounded threads, request size and time; HTTPS with the binary's
// certificate (renewed on disk, it is served from the next connection on);
// when a token is set every request must carry it.
struct HttpOptions {
  std::string listen;    // host:port; port 0 picks a free one
  std::string tls_cert;  // PEM files, both or neither: serve HTTPS
  std::string tls_key;
  BearerToken token;     // non-empty: "Authorization: Bearer T", or the
                         // dfc_token cookie that "?token=T" sets (T: any
                         // token it holds)
  int threads = 4;
  std::string name = "http";  // in error messages ("--metrics-listen")
};

struct HttpRequest {
  std::string path;   // without the query
  std::map<std::string, std::string> params;  // the query, decoded
  // A query parameter, "" when absent.
  std::string Param(const std::string& name) const {
    auto it = params.find(name);
    return it == params.end() ? "" : it->second;
  }
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  static HttpResponse Text(int status, std::string body) { return {status, "text/plain; charset=utf-8", std::move(body)}; }
};

// Answers one request; runs on one of the server's threads.
using HttpHandler = std::function<HttpResponse(const HttpRequest&)>;

class HttpServer {
 public:
  // Serves `handler` for every path. Fails with the reason when it cannot
  // listen or the certificate does not load.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(const HttpOptions& options, HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  int port() const { return port_; }
  // "http(s)://host:port" as a browser reaches it.
  std::string url() const { return url_; }

 private:
  HttpServer(HttpOptions options, HttpHandler handler);
  // Checks the token, then asks the handler.
  HttpResponse Serve(const HttpRequest& req, const std::string& authorization, const std::string& cookies,
                     std::string* set_cookie) const;
  const HttpOptions options_;
  const HttpHandler handler_;
  std::unique_ptr<CertificateFiles> certificate_;  // HTTPS: what handshakes hand out
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  int port_ = 0;
  std::string url_;
};

}  // namespace dfc

#endif  // DFC_COMMON_HTTP_HTTP_SERVER_H_
