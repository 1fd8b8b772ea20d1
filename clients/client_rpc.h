#ifndef DFC_CLIENTS_CLIENT_RPC_H_
#define DFC_CLIENTS_CLIENT_RPC_H_

#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "common/rpc/rpc_util.h"

namespace dfc {

// How `dfc` reaches the coordinator: the global flags every RPC command shares.
struct ClientArgs {
  std::string coordinator;
  std::string server;  // dfc-server replicas (evaluate, import, models)
  RpcSecurity security;
  std::string token_file;
  bool json = false;
};

// Registers --coordinator (or DFC_COORDINATOR), --tls-* and --token-file on `app`.
std::shared_ptr<ClientArgs> AddCoordinatorOptions(CLI::App& app);

// A channel to the coordinator (reads the token file first).
absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenChannel(ClientArgs& c);

// Registers --server (or DFC_SERVER) on an evaluation command.
void AddServerOption(CLI::App* cmd, ClientArgs* c);

// A round-robin channel over the evaluation servers: --server, else the
// replicas the coordinator lists (the ones that announced themselves).
absl::StatusOr<std::shared_ptr<grpc::Channel>> OpenServerChannel(ClientArgs& c);

// For spreading streams: one channel per replica when their addresses are
// known (a list, or the coordinator's), so the client places each stream
// itself; one round-robin channel for a single name (dns:///NAME:PORT).
absl::StatusOr<std::vector<std::shared_ptr<grpc::Channel>>> OpenServerChannels(ClientArgs& c);

// ReportError for a call's status. A server's RESOURCE_EXHAUSTED says it
// cannot take the call now (at its limit of calls or streams, its state
// disk full), not that the request was bad (dfc checks its own size limits
// before sending): it exits kExitUnavailable, as an unreachable one does.
int ReportRpcError(const grpc::Status& status);

// A message as JSON with the proto field names and every field printed.
std::string ToJson(const google::protobuf::Message& m);

}  // namespace dfc

#endif  // DFC_CLIENTS_CLIENT_RPC_H_
