#include "common/http/http_server.h"

#include <sys/socket.h>

#include <httplib.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
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
    bool ok = ConstantTimeEquals(authorization, "Bearer " + options_.token) ||
              ConstantTimeEquals(CookieValue(cookies, kCookie), options_.token);
    if (!ok && !req.Param("token").empty() && ConstantTimeEquals(req.Param("token"), options_.token)) {
      // A link with the token: keep it in a cookie and drop it from the address bar.
      *set_cookie = absl::StrCat(kCookie, "=", options_.token, "; Path=/; HttpOnly; SameSite=Strict");
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
