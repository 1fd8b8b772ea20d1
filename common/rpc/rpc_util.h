#ifndef DFC_COMMON_RPC_RPC_UTIL_H_
#define DFC_COMMON_RPC_RPC_UTIL_H_

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/rpc/bearer_token.h"

namespace dfc {

// Message size limit on every channel and server (images and metrics only;
// checkpoints travel on the shared volume, never over gRPC).
inline constexpr int kMaxMessageBytes = 16 << 20;
// The longest a channel waits before trying to reconnect (gRPC: 120 s).
inline constexpr int kMaxReconnectBackoffMs = 5000;
// Default deadline of a unary call.
inline constexpr std::chrono::milliseconds kRpcDeadline{10000};

// TLS and token settings shared by every endpoint's flags.
struct RpcSecurity {
  std::string tls_cert;   // PEM file: server certificate (server) / client certificate (client, optional)
  std::string tls_key;    // PEM file: its key
  std::string tls_ca;     // PEM file: CA to verify the peer; on a server, set => client certificates required
  BearerToken token;      // a client sends it, a server requires it; empty = none
  // How the flags that set the files begin, for messages: dfc-server's
  // files towards the coordinator are --coordinator-tls-cert and so on.
  std::string flag_prefix = "--";
  bool insecure() const { return tls_cert.empty() && tls_ca.empty(); }
};

// How often the TLS files are read again: a certificate, key or CA renewed
// on disk (a Kubernetes Secret updated in place, cert-manager) is used for
// the connections made after that, without a restart. Replace a key and
// its certificate together (rename into place, as the kubelet does): a
// key read with the other's certificate fails handshakes until the next read.
inline constexpr int kTlsRefreshSeconds = 10;

// Server side: credentials from the flags (insecure when no TLS flag is set).
// The files are checked at start (readable, PEM, the key is the
// certificate's) and then watched (kTlsRefreshSeconds).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const RpcSecurity& security);
// Threads a server may run calls on (each open stream holds one): beyond
// it, new calls are refused with RESOURCE_EXHAUSTED instead of a client
// opening streams until the process runs out of memory.
inline constexpr int kDefaultMaxRpcThreads = 512;
// A started gRPC server on `listen` with DFC's message limits, at most
// `max_threads` threads, keepalive pings (a peer that vanished without
// closing its connection is noticed within ~80 s and its streams end), the
// default health service and `services`; *port gets the bound port. nullptr
// when it cannot listen (WhyCannotListen says why). The port is its own: a
// second process cannot listen on it too (gRPC's default, SO_REUSEPORT,
// let a second coordinator share it, and clients' connections were split
// between the two, each with its own jobs).
std::unique_ptr<grpc::Server> StartGrpcServer(const std::string& listen,
                                              const std::shared_ptr<grpc::ServerCredentials>& credentials,
                                              const std::vector<grpc::Service*>& services, int* port,
                                              int max_threads = kDefaultMaxRpcThreads);
// Why no server can listen on `listen` (HOST:PORT, [V6]:PORT): what binding
// a socket there as the servers do says ("Address already in use", "Cannot
// assign requested address"), or "" when that bind succeeds.
std::string WhyCannotListen(const std::string& listen);
// "cannot listen on LISTEN: WHY" (WhyCannotListen), or without ": WHY" when
// it has no answer: what a server that cannot start says.
std::string CannotListen(const std::string& listen);
// `listen` (HOST:PORT) with the port a server bound: what to print and
// advertise when it was started on port 0.
std::string BoundAddress(const std::string& listen, int port);
// Client side: a channel with size limits, TLS when a CA is given; the
// server's name is checked against its certificate, and the files are
// checked and watched as a server's are.
// With `round_robin`, calls spread over every address the target resolves
// to (`dns:///name:port` of a headless Service, or an `ipv4:a:p,b:p` list)
// instead of all going to the first.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address, const RpcSecurity& security,
                                                           bool round_robin = false);
// A gRPC target for a server list: "host:port" or "dns:///name:port" as
// they are; "a:p,b:p" of IP literals becomes an ipv4:/ipv6: address list.
absl::StatusOr<std::string> ServerListTarget(const std::string& servers);
// A client context with the deadline and the bearer token.
std::unique_ptr<grpc::ClientContext> MakeContext(const RpcSecurity& security,
                                                 std::chrono::milliseconds deadline = kRpcDeadline);
// Server side: OK when no token is configured or the call carries one of
// them ("authorization: Bearer T", compared in constant time).
grpc::Status CheckToken(const grpc::ServerContext& context, const BearerToken& token);
bool ConstantTimeEquals(const std::string& a, const std::string& b);

// Whether a listen address (host:port) binds only the loopback interface.
bool IsLoopbackListen(const std::string& address);


// grpc.health.v1 Check of the server's overall status: "SERVING",
// "NOT_SERVING", or why the call failed.
std::string HealthStatus(const std::shared_ptr<grpc::Channel>& channel, const RpcSecurity& security = {},
                         std::chrono::milliseconds deadline = std::chrono::seconds(5));

// The one place an absl::Status becomes a grpc::Status, and back. ToGrpc
// cuts a message past 2 KiB (at a character boundary, saying how much was
// left out) so that it fits the peer's metadata limit.
grpc::Status ToGrpc(const absl::Status& status);
absl::Status FromGrpc(const grpc::Status& status);

// INVALID_ARGUMENT naming the first string field of `m` (as "config.data")
// that is not UTF-8 and where, before a request is sent: proto3 strings
// must be UTF-8 and the receiver would refuse the whole message with no
// word of which field (common/utf8.h).
absl::Status CheckUtf8Strings(const google::protobuf::Message& m);

}  // namespace dfc

#endif  // DFC_COMMON_RPC_RPC_UTIL_H_
