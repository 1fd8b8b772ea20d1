#include "common/rpc/rpc_util.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_certificate_verifier.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/rpc/tls_files.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace dfc {
namespace {

// The files a process is started with are read here, so that a missing or
// unreadable one, one that holds no certificate, or a key that is not the
// certificate's stops it at start with the flag named (gRPC's file watcher
// would start anyway and fail every handshake).
absl::Status CheckTlsFiles(const RpcSecurity& s) {
  const std::string cert_flag = s.flag_prefix + "tls-cert";
  const std::string key_flag = s.flag_prefix + "tls-key";
  const std::string ca_flag = s.flag_prefix + "tls-ca";
  if (s.tls_cert.empty() != s.tls_key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(cert_flag, " and ", key_flag, " go together: give both or neither"));
  }
  if (!s.tls_ca.empty()) {
    DFC_ASSIGN_OR_RETURN(const std::string ca, ReadPemFile(s.tls_ca, ca_flag));
    if (ParseCertificates(ca).empty()) {
      return absl::InvalidArgumentError(absl::StrCat(ca_flag, ": '", s.tls_ca, "' holds no PEM certificate"));
    }
  }
  if (s.tls_cert.empty()) return absl::OkStatus();
  return ReadKeyPair(s.tls_cert, s.tls_key, cert_flag, key_flag).status();
}

// Watches the files (absolute paths: gRPC reads them on its own thread for
// the life of the process) for renewed certificates.
std::shared_ptr<grpc::experimental::CertificateProviderInterface> WatchTlsFiles(const RpcSecurity& s) {
  auto abs = [](const std::string& p) { return p.empty() ? p : std::filesystem::absolute(p).string(); };
  return std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      abs(s.tls_key), abs(s.tls_cert), abs(s.tls_ca), static_cast<unsigned>(kTlsRefreshSeconds));
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const RpcSecurity& s) {
  if (s.insecure()) return grpc::InsecureServerCredentials();
  if (s.tls_cert.empty() || s.tls_key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(s.flag_prefix, "tls-cert and ", s.flag_prefix,
                                                   "tls-key are both required for TLS"));
  }
  DFC_RETURN_IF_ERROR(CheckTlsFiles(s));
  grpc::experimental::TlsServerCredentialsOptions opts(WatchTlsFiles(s));
  opts.watch_identity_key_cert_pairs();
  if (s.tls_ca.empty()) {
    opts.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    opts.watch_root_certs();
    opts.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(opts);
}

std::unique_ptr<grpc::Server> StartGrpcServer(const std::string& listen,
                                              const std::shared_ptr<grpc::ServerCredentials>& credentials,
                                              const std::vector<grpc::Service*>& services, int* port,
                                              int max_threads) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  *port = 0;
  builder.AddListeningPort(listen, credentials, port);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  grpc::ResourceQuota quota("dfc-rpc");
  quota.SetMaxThreads(max_threads);
  builder.SetResourceQuota(quota);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 60000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  for (grpc::Service* service : services) builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (*port == 0) return nullptr;
  return server;
}

std::string WhyCannotListen(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string::npos || absl::StartsWith(listen, "unix:")) return "";
  std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return ::gai_strerror(rc);
  }
  std::string why;
  const int fd = ::socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, found->ai_protocol);
  if (fd < 0) {
    why = std::strerror(errno);
  } else {
    const int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    if (::bind(fd, found->ai_addr, found->ai_addrlen) != 0 || ::listen(fd, 1) != 0) why = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return why;
}

std::string CannotListen(const std::string& listen) {
  const std::string why = WhyCannotListen(listen);
  return absl::StrCat("cannot listen on ", listen, why.empty() ? "" : ": ", why);
}

std::string BoundAddress(const std::string& listen, int port) {
  const size_t colon = listen.rfind(':');
  return absl::StrCat(colon == std::string::npos ? listen : listen.substr(0, colon), ":", port);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address, const RpcSecurity& s,
                                                           bool round_robin) {
  if (address.empty()) return absl::InvalidArgumentError("--coordinator: an address is required (or set DFC_COORDINATOR)");
  grpc::ChannelArguments args;
  if (round_robin) args.SetLoadBalancingPolicyName("round_robin");
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // gRPC backs off reconnecting up to 120 s by default: a worker would find a
  // coordinator restarted after a minute's outage only a minute or so later,
  // past its jobs' --reattach-timeout. A few seconds at most.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, kMaxReconnectBackoffMs);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (s.insecure()) {
    creds = grpc::InsecureChannelCredentials();
  } else {
    DFC_RETURN_IF_ERROR(CheckTlsFiles(s));
    grpc::experimental::TlsChannelCredentialsOptions opts;
    opts.set_certificate_provider(WatchTlsFiles(s));
    if (!s.tls_ca.empty()) opts.watch_root_certs();  // else the system's roots
    if (!s.tls_cert.empty()) opts.watch_identity_key_cert_pairs();
    opts.set_verify_server_certs(true);
    opts.set_certificate_verifier(std::make_shared<grpc::experimental::HostNameCertificateVerifier>());
    creds = grpc::experimental::TlsCredentials(opts);
  }
  return grpc::CreateCustomChannel(address, creds, args);
}

std::unique_ptr<grpc::ClientContext> MakeContext(const RpcSecurity& s, std::chrono::milliseconds deadline) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + deadline);
  if (!s.token.empty()) ctx->AddMetadata("authorization", "Bearer " + s.token.Current());
  return ctx;
}

bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  // Every byte of the longer string is visited whatever the inputs, so the
  // time taken does not say how much of a guess was right.
  const size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

grpc::Status CheckToken(const grpc::ServerContext& context, const BearerToken& token) {
  if (token.empty()) return grpc::Status::OK;
  auto it = context.client_metadata().find("authorization");
  absl::string_view presented;
  if (it != context.client_metadata().end()) presented = absl::string_view(it->second.data(), it->second.size());
  if (!absl::ConsumePrefix(&presented, "Bearer ") || !token.Accepts(presented)) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "a valid bearer token is required");
  }
  return grpc::Status::OK;
}

bool IsLoopbackListen(const std::string& address) {
  std::string host = address;
  if (const size_t colon = host.rfind(':'); colon != std::string::npos) host.resize(colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

grpc::Status ToGrpc(const absl::Status& s) {
  // The message travels in the grpc-message trailer, percent-encoded, and a
  // peer refuses trailers over its metadata limit (8 KiB by default) with
  // "received initial metadata size exceeds limit" in place of the message:
  // one that quotes what a client sent (a 50,000-byte job id) is cut.
  constexpr size_t kMaxMessageBytes = 2048;
  const auto code = static_cast<grpc::StatusCode>(s.code());
  const absl::string_view message = s.message();
  if (message.size() <= kMaxMessageBytes) return grpc::Status(code, std::string(message));
  size_t cut = kMaxMessageBytes;
  while (cut > 0 && (static_cast<unsigned char>(message[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 sequence
  return grpc::Status(code, absl::StrCat(message.substr(0, cut), "... (", message.size() - cut, " more bytes)"));
}

absl::Status FromGrpc(const grpc::Status& s) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

std::string HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const RpcSecurity& security,
                         std::chrono::milliseconds deadline) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  auto ctx = MakeContext(security, deadline);
  grpc::health::v1::HealthCheckResponse resp;
  grpc::Status st = stub->Check(ctx.get(), grpc::health::v1::HealthCheckRequest(), &resp);
  if (!st.ok()) return absl::StrCat("unreachable: ", st.error_message());
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status());
}

absl::StatusOr<std::string> ServerListTarget(const std::string& servers) {
  if (servers.find(',') == std::string::npos) return servers;
  // Already a gRPC target with its own resolver.
  if (absl::StartsWith(servers, "ipv4:") || absl::StartsWith(servers, "ipv6:") || absl::StartsWith(servers, "dns:")) {
    return servers;
  }
  std::vector<std::string> v4, v6;
  for (absl::string_view a : absl::StrSplit(servers, ',', absl::SkipWhitespace())) {
    a = absl::StripAsciiWhitespace(a);
    if (absl::StartsWith(a, "[")) {
      v6.emplace_back(a);
      continue;
    }
    const size_t colon = a.rfind(':');
    in_addr ip;
    if (colon == absl::string_view::npos || ::inet_pton(AF_INET, std::string(a.substr(0, colon)).c_str(), &ip) != 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "server list '", servers, "': '", a, "' is not IP:PORT (a list takes IP literals; use dns:///NAME:PORT "
          "for a name with several addresses)"));
    }
    v4.emplace_back(a);
  }
  if (!v4.empty() && !v6.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("server list '", servers, "': IPv4 and IPv6 cannot be mixed"));
  }
  return v4.empty() ? absl::StrCat("ipv6:", absl::StrJoin(v6, ",")) : absl::StrCat("ipv4:", absl::StrJoin(v4, ","));
}

namespace {

absl::Status CheckUtf8Field(const google::protobuf::Message& m, const std::string& prefix) {
  using google::protobuf::FieldDescriptor;
  const google::protobuf::Reflection* r = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    const std::string name = prefix + f->name();
    const int n = f->is_repeated() ? r->FieldSize(m, f) : 1;
    for (int i = 0; i < n; ++i) {
      const std::string at = f->is_repeated() ? absl::StrCat(name, "[", i, "]") : name;
      if (f->type() == FieldDescriptor::TYPE_STRING) {
        const std::string v = f->is_repeated() ? r->GetRepeatedString(m, f, i) : r->GetString(m, f);
        if (const size_t bad = InvalidUtf8Offset(v); bad != std::string::npos) {
          return absl::InvalidArgumentError(absl::StrCat(
              at, " '", ValidUtf8(v), "' is not UTF-8 (byte ", bad, "); the cluster's messages carry UTF-8 text only"));
        }
      } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        const google::protobuf::Message& sub = f->is_repeated() ? r->GetRepeatedMessage(m, f, i) : r->GetMessage(m, f);
        if (absl::Status st = CheckUtf8Field(sub, at + "."); !st.ok()) return st;
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckUtf8Strings(const google::protobuf::Message& m) { return CheckUtf8Field(m, ""); }

}  // namespace dfc
