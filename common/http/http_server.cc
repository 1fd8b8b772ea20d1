#include "common/http/http_server.h"

#include <sys/socket.h>

#include <httplib.h>
#include <openssl/ssl.h>

#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "common/atomic_file.h"
#include "common/rpc/tls_files.h"
#include "common/rpc/rpc_util.h"

namespace dfc {
namespace {

constexpr char kCookie[] = "dfc_token";

void SetCommonHeaders(httplib::Response& res) {
  res.set_header("Cache-Control", "no-store");
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("X-Frame-Options", "DENY");
  res.set_header("Referrer-Policy", "no-referrer");
  res.set_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data:");
}

// The host part of HOST:PORT as a bind address ("" and "0.0.0.0": every interface).
std::string BindHost(const std::string& listen, size_t colon) {
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host == "localhost") host = "127.0.0.1";
  if (host.empty()) host = "0.0.0.0";
  return host;
}

std::string CookieValue(const std::string& cookies, const std::string& name) {
  for (absl::string_view part : absl::StrSplit(cookies, ';')) {
    part = absl::StripAsciiWhitespace(part);
    if (absl::ConsumePrefix(&part, name + "=")) return std::string(part);
  }
  return "";
}

}  // namespace

// The certificate and key an HTTPS server hands out, read again when either
// file changes (looked at in a handshake, at most once a second), so that a
// renewed pair is served without a restart. A changed pair that does not
// load (a file half written, a key that is not the certificate's) is not
// served: the pair loaded before stays, and why is logged once.
class CertificateFiles {
 public:
  CertificateFiles(std::string name, std::string cert, std::string key)
      : name_(std::move(name)), cert_path_(std::move(cert)), key_path_(std::move(key)) {}

  absl::Status Load() {
    absl::MutexLock lock(&mu_);
    version_ = Version();
    auto pair = Read();
    if (!pair.ok()) return pair.status();
    pair_ = *std::move(pair);
    return absl::OkStatus();
  }

  // SSL_CTX_set_cert_cb: the pair for this handshake.
  static int Select(SSL* ssl, void* arg) {
    std::shared_ptr<const KeyPair> pair = static_cast<CertificateFiles*>(arg)->Current();
    return SSL_use_cert_and_key(ssl, pair->cert.get(), pair->key.get(), pair->chain.get(), 1) == 1 ? 1 : 0;
  }

 private:
  std::string Version() const { return FileStamp(cert_path_) + "|" + FileStamp(key_path_); }

  absl::StatusOr<std::shared_ptr<const KeyPair>> Read() const {
    auto pair = ReadKeyPair(cert_path_, key_path_);
    if (!pair.ok()) return pair.status();
    return std::make_shared<const KeyPair>(*std::move(pair));
  }

  std::shared_ptr<const KeyPair> Current() {
    absl::MutexLock lock(&mu_);
    const auto now = std::chrono::steady_clock::now();
    if (now < next_look_) return pair_;
    next_look_ = now + std::chrono::seconds(1);
    const auto version = Version();
    if (version == version_) return pair_;
    version_ = version;
    auto pair = Read();
    if (pair.ok()) {
      pair_ = *std::move(pair);
      std::fprintf(stderr, "%s: serving the renewed certificate '%s'\n", name_.c_str(), cert_path_.c_str());
    } else {
      std::fprintf(stderr, "%s: the certificate or key changed on disk but does not load (%s); still serving the "
                   "pair loaded before\n", name_.c_str(), std::string(pair.status().message()).c_str());
    }
    return pair_;
  }

  const std::string name_, cert_path_, key_path_;
  absl::Mutex mu_;
  std::shared_ptr<const KeyPair> pair_ ABSL_GUARDED_BY(mu_);
  std::string version_ ABSL_GUARDED_BY(mu_);
  std::chrono::steady_clock::time_point next_look_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<std::unique_ptr<HttpServer>> HttpServer::Start(const HttpOptions& options, HttpHandler handler) {
  const bool tls = !options.tls_cert.empty() || !options.tls_key.empty();
  if (tls && (options.tls_cert.empty() || options.tls_key.empty())) {
    return absl::InvalidArgumentError(options.name + ": HTTPS needs both a certificate and a key");
  }
  const auto colon = options.listen.rfind(':');
  int port = -1;
  if (colon != std::string::npos) {
    try {
      port = std::stoi(options.listen.substr(colon + 1));
    } catch (const std::exception&) {
    }
  }
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(options.name, ": '", options.listen, "' is not HOST:PORT"));
  }
  std::unique_ptr<HttpServer> self(new HttpServer(options, std::move(handler)));
  if (tls) {
    auto ssl = std::make_unique<httplib::SSLServer>(options.tls_cert.c_str(), options.tls_key.c_str());
    if (!ssl->is_valid()) {
      return absl::InvalidArgumentError(absl::StrCat(options.name, ": cannot load the certificate '",
                                                     options.tls_cert, "' with the key '", options.tls_key, "'"));
    }
    self->certificate_ = std::make_unique<CertificateFiles>(options.name, options.tls_cert, options.tls_key);
    if (absl::Status st = self->certificate_->Load(); !st.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(options.name, ": ", st.message()));
    }
    SSL_CTX_set_cert_cb(ssl->ssl_context(), &CertificateFiles::Select, self->certificate_.get());
    self->server_ = std::move(ssl);
  } else {
    self->server_ = std::make_unique<httplib::Server>();
  }
  httplib::Server& s = *self->server_;
  const int threads = std::max(1, options.threads);
  s.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  s.set_read_timeout(std::chrono::seconds(10));
  s.set_write_timeout(std::chrono::seconds(10));
  s.set_payload_max_length(16 << 10);
  s.set_keep_alive_max_count(20);
  // SO_REUSEADDR alone: cpp-httplib sets SO_REUSEPORT, with which a second
  // process on the same port is let in and takes half the connections.
  s.set_socket_options([](socket_t sock) {
    const int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  });
  HttpServer* raw = self.get();
  s.Get(".*", [raw, tls](const httplib::Request& req, httplib::Response& res) {
    HttpRequest r;
    r.path = req.path;
    for (const auto& [k, v] : req.params) r.params.emplace(k, v);
    std::string set_cookie;
    HttpResponse out = raw->Serve(r, req.get_header_value("Authorization"), req.get_header_value("Cookie"),
                                  &set_cookie);
    SetCommonHeaders(res);
    if (!set_cookie.empty()) {
      res.set_header("Set-Cookie", set_cookie + (tls ? "; Secure" : ""));
      res.set_header("Location", req.path);
    }
    if (out.status == 401) res.set_header("WWW-Authenticate", "Bearer");
    res.status = out.status;
    res.set_content(out.body, out.content_type.c_str());
  });
  auto refuse = [](const httplib::Request&, httplib::Response& res) {
    SetCommonHeaders(res);
    res.status = 405;
    res.set_header("Allow", "GET, HEAD");
    res.set_content("read-only: GET and HEAD only\n", "text/plain; charset=utf-8");
  };
  s.Post(".*", refuse);
  s.Put(".*", refuse);
  s.Patch(".*", refuse);
  s.Delete(".*", refuse);
  const std::string host = BindHost(options.listen, colon);
  if (port == 0) {
    port = s.bind_to_any_port(host);
  } else if (!s.bind_to_port(host, port)) {
    port = -1;
  }
  if (port <= 0) {
    const std::string why = WhyCannotListen(options.listen);
    return absl::UnavailableError(absl::StrCat(options.name, ": cannot listen on ", options.listen, ": ",
                                               why.empty() ? "in use, or not an address of this machine" : why));
  }
  self->port_ = port;
  const std::string url_host = host == "0.0.0.0" || host == "::" ? "127.0.0.1"
                               : host.find(':') != std::string::npos ? "[" + host + "]" : host;
  self->url_ = absl::StrCat(tls ? "https://" : "http://", url_host, ":", port);
  self->thread_ = std::thread([raw] { raw->server_->listen_after_bind(); });
  return self;
}

HttpServer::HttpServer(HttpOptions options, HttpHandler handler)
    : options_(std::move(options)), handler_(std::move(handler)) {}

HttpServer::~HttpServer() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

HttpResponse HttpServer::Serve(const HttpRequest& req, const std::string& authorization, const std::string& cookies,
                               std::string* set_cookie) const {
  if (!options_.token.empty()) {
    absl::string_view bearer = authorization;
    const std::string cookie = CookieValue(cookies, kCookie);
    bool ok = (absl::ConsumePrefix(&bearer, "Bearer ") && options_.token.Accepts(bearer)) ||
              (!cookie.empty() && options_.token.Accepts(cookie));
    const std::string link = req.Param("token");
    if (!ok && !link.empty() && options_.token.Accepts(link)) {
      // A link with the token: keep it in a cookie and drop it from the address bar.
      *set_cookie = absl::StrCat(kCookie, "=", link, "; Path=/; HttpOnly; SameSite=Strict");
      return HttpResponse::Text(303, "see " + req.path + "\n");
    }
    if (!ok) {
      return HttpResponse::Text(401, "this endpoint needs the cluster's token: send 'Authorization: Bearer TOKEN', "
                                     "or open the page once as URL?token=TOKEN\n");
    }
  }
  try {
    return handler_(req);
  } catch (const std::exception& e) {
    return HttpResponse::Text(500, std::string("internal error: ") + e.what() + "\n");
  }
}

}  // namespace dfc
