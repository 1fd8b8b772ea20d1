// Credential files as operators keep them: certificates renewed on disk
// while the processes run (a Kubernetes Secret updated in place,
// cert-manager), a move to a new CA, files that cannot serve, and token
// files rotated. Real gRPC servers and channels on loopback, real HTTPS
// with curl, certificates made by openssl.
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "common/http/http_server.h"
#include "common/http/metrics_endpoint.h"
#include "common/rpc/bearer_token.h"
#include "common/rpc/rpc_util.h"
#include "dfc/v1/dfc.grpc.pb.h"
#include "tests/test_util.h"

namespace dfc {
namespace {

using testing::Pki;
using testing::RunCommand;

// A process's TLS files, in a folder of their own (what it was started with).
struct Files {
  testing::TempDir dir;
  RpcSecurity security;
  Files(const Pki& pki, const std::string& ca, const std::string& identity) {
    security.tls_ca = dir.Join("ca.pem");
    security.tls_cert = dir.Join("tls.crt");
    security.tls_key = dir.Join("tls.key");
    Renew(pki, ca, identity);
  }
  void Renew(const Pki& pki, const std::string& ca, const std::string& identity) const {
    Pki::Install(pki[ca + ".pem"], security.tls_ca);
    Pki::Install(pki[identity + ".key"], security.tls_key);
    Pki::Install(pki[identity + ".pem"], security.tls_cert);
  }
};

// A gRPC server with the health service (and a service whose calls are all
// unimplemented: a server needs one).
std::unique_ptr<grpc::Server> Serve(const RpcSecurity& security, const std::string& listen, int* port) {
  static v1::JobService::Service unimplemented;
  auto creds = MakeServerCredentials(security);
  EXPECT_TRUE(creds.ok()) << creds.status();
  if (!creds.ok()) return nullptr;
  return StartGrpcServer(listen, *creds, {&unimplemented}, port);
}

// A server started on a free loopback port with a process's TLS files.
struct ServedFiles {
  Files files;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
  ServedFiles(const Pki& pki, const std::string& ca, const std::string& identity) : files(pki, ca, identity) {
    server = Serve(files.security, "127.0.0.1:0", &port);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

// The health of the server at `address` over a new channel with `files`.
std::string HealthOverNewChannel(const std::string& address, const Files& files) {
  auto channel = MakeChannel(address, files.security);
  if (!channel.ok()) return channel.status().ToString();
  return HealthStatus(*channel, files.security, std::chrono::seconds(3));
}

// Calls `probe` until it answers `want`, for at most `seconds`; its last answer.
template <typename Probe>
std::string Await(const std::string& want, int seconds, Probe probe) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  std::string got = probe();
  while (got != want && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    got = probe();
  }
  return got;
}

TEST(TlsFilesTest, AServerServesACertificateRenewedOnDiskWithoutARestart) {
  Pki pki;
  // Moving to a new CA: the server first trusts clients of both.
  ServedFiles server(pki, "both", "server1");
  ASSERT_NE(server.server, nullptr);
  const std::string address = server.address();
  Files old_client(pki, "ca1", "client1");
  Files new_client(pki, "ca2", "client2");
  ASSERT_EQ(HealthOverNewChannel(address, old_client), "SERVING");
  // A client that trusts the new CA alone refuses the certificate served now.
  ASSERT_NE(HealthOverNewChannel(address, new_client), "SERVING");

  server.files.Renew(pki, "both", "server2");
  const auto renewed = std::chrono::steady_clock::now();
  EXPECT_EQ(Await("SERVING", 3 * kTlsRefreshSeconds, [&] { return HealthOverNewChannel(address, new_client); }),
            "SERVING");
  std::printf("served the renewed certificate %.1f s after it was written\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - renewed).count());
  // And the old one is no longer served.
  EXPECT_NE(HealthOverNewChannel(address, old_client), "SERVING");
}

TEST(TlsFilesTest, AClientUsesItsRenewedFilesForItsNextConnection) {
  Pki pki;
  Files client(pki, "ca1", "client1");
  Files server(pki, "ca1", "server1");
  int port = 0;
  auto first = Serve(server.security, "127.0.0.1:0", &port);
  ASSERT_NE(first, nullptr);
  const std::string address = "127.0.0.1:" + std::to_string(port);
  // One channel for the whole test, as a worker keeps its channel to the coordinator.
  auto channel = MakeChannel(address, client.security);
  ASSERT_TRUE(channel.ok()) << channel.status();
  ASSERT_EQ(HealthStatus(*channel, client.security), "SERVING");

  // Everything moves to CA 2; the server comes back trusting CA 2 alone, so
  // the channel gets through only with both its renewed CA and its renewed
  // certificate.
  client.Renew(pki, "ca2", "client2");
  server.Renew(pki, "ca2", "server2");
  first->Shutdown();
  first.reset();
  int same_port = 0;
  auto second = Serve(server.security, address, &same_port);
  ASSERT_NE(second, nullptr);
  ASSERT_EQ(same_port, port);
  EXPECT_EQ(Await("SERVING", 6 * kTlsRefreshSeconds, [&] { return HealthStatus(*channel, client.security); }),
            "SERVING");
  // A channel made now from CA 1's files is refused by the renewed server.
  Files stale(pki, "ca1", "client1");
  EXPECT_NE(HealthOverNewChannel(address, stale), "SERVING");
}

TEST(TlsFilesTest, AClientRefusesACertificateForAnotherName) {
  Pki pki;
  ServedFiles elsewhere(pki, "ca1", "elsewhere");
  ASSERT_NE(elsewhere.server, nullptr);
  Files client(pki, "ca1", "client1");
  const std::string got = HealthOverNewChannel(elsewhere.address(), client);
  EXPECT_NE(got, "SERVING") << "a certificate for elsewhere.example was taken for 127.0.0.1";
  // The same client reaches a server whose certificate names the address.
  ServedFiles right(pki, "ca1", "server1");
  ASSERT_NE(right.server, nullptr);
  EXPECT_EQ(HealthOverNewChannel(right.address(), client), "SERVING");
}

TEST(TlsFilesTest, FilesThatCannotServeStopAProcessAtStartNamingTheFlag) {
  Pki pki;
  Files files(pki, "ca1", "server1");
  auto error_of = [](const absl::Status& st) { return std::string(st.message()); };
  // A key that is not the certificate's.
  Pki::Install(pki["server2.key"], files.security.tls_key);
  auto mismatched = MakeServerCredentials(files.security);
  ASSERT_FALSE(mismatched.ok());
  EXPECT_NE(error_of(mismatched.status()).find("--tls-key: '" + files.security.tls_key +
                                               "' is not the key of the certificate in --tls-cert"),
            std::string::npos)
      << mismatched.status();
  EXPECT_FALSE(MakeChannel("127.0.0.1:1", files.security).ok());
  // A certificate file half written.
  Pki::Install(pki["server1.key"], files.security.tls_key);
  testing::WriteFileOrDie(files.security.tls_cert, "-----BEGIN CERTIFICATE-----\nMIIB");
  auto truncated = MakeServerCredentials(files.security);
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(error_of(truncated.status()).find("--tls-cert: '" + files.security.tls_cert + "' holds no PEM certificate"),
            std::string::npos)
      << truncated.status();
  // A missing CA, and a client certificate without its key.
  Pki::Install(pki["server1.pem"], files.security.tls_cert);
  RpcSecurity no_ca = files.security;
  no_ca.tls_ca = files.dir.Join("absent.pem");
  auto missing = MakeChannel("127.0.0.1:1", no_ca);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(error_of(missing.status()).find("--tls-ca"), std::string::npos) << missing.status();
  RpcSecurity no_key = files.security;
  no_key.tls_key.clear();
  auto half = MakeChannel("127.0.0.1:1", no_key);
  ASSERT_FALSE(half.ok());
  EXPECT_NE(error_of(half.status()).find("--tls-cert and --tls-key go together"), std::string::npos) << half.status();
  // Files set by other flags (dfc-server's towards the coordinator) are
  // named by those flags.
  no_ca.flag_prefix = "--coordinator-";
  auto upstream = MakeChannel("127.0.0.1:1", no_ca);
  ASSERT_FALSE(upstream.ok());
  EXPECT_NE(error_of(upstream.status()).find("--coordinator-tls-ca: cannot open '" + no_ca.tls_ca + "'"), std::string::npos)
      << upstream.status();
  // The files as they were serve.
  EXPECT_TRUE(MakeServerCredentials(files.security).ok());
}

TEST(TlsFilesTest, HttpsServesARenewedCertificateAndKeepsTheOldOneWhileTheNewOneDoesNotLoad) {
  Pki pki;
  Files files(pki, "ca1", "server1");
  HttpOptions options;
  options.listen = "127.0.0.1:0";
  options.tls_cert = files.security.tls_cert;
  options.tls_key = files.security.tls_key;
  options.name = "--metrics-listen";
  auto server = HttpServer::Start(options, [](const HttpRequest&) { return HttpResponse::Text(200, "ok\n"); });
  ASSERT_TRUE(server.ok()) << server.status();
  auto get = [&](const std::string& ca) {
    return RunCommand("curl -sS -m 5 --cacert " + pki[ca] + " " + (*server)->url() + "/").out;
  };
  ASSERT_EQ(get("ca1.pem"), "ok\n");
  ASSERT_NE(get("ca2.pem"), "ok\n");
  // A renewal caught half way: the new key is in place, the certificate is
  // still the old one. The pair loaded before is served meanwhile.
  Pki::Install(pki["server2.key"], files.security.tls_key);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // past the once-a-second look at the files
  EXPECT_EQ(get("ca1.pem"), "ok\n");
  EXPECT_EQ(get("ca1.pem"), "ok\n");
  Pki::Install(pki["server2.pem"], files.security.tls_cert);
  EXPECT_EQ(Await("ok\n", 5, [&] { return get("ca2.pem"); }), "ok\n");
  EXPECT_NE(get("ca1.pem"), "ok\n");
}


// Past the once-a-second look at the file.
void AfterALook() { std::this_thread::sleep_for(std::chrono::milliseconds(1100)); }

TEST(BearerTokenTest, AFileIsReadAgainWhenItChangesAndAnyOfItsTokensIsAccepted) {
  testing::TempDir dir;
  const std::string path = dir.Join("token");
  testing::ReplaceFileOrDie(path, "  old-token \n");
  auto token = BearerToken::FromFile(path, "--token-file");
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(token->Current(), "old-token");
  EXPECT_TRUE(token->Accepts("old-token"));
  EXPECT_FALSE(token->Accepts("new-token"));
  const BearerToken copy = *token;  // as each service holds one
  testing::ReplaceFileOrDie(path, "old-token\nnew-token\n");
  AfterALook();
  EXPECT_TRUE(copy.Accepts("new-token"));
  EXPECT_TRUE(copy.Accepts("old-token"));
  EXPECT_EQ(token->Current(), "old-token");  // a client sends the first line
  testing::ReplaceFileOrDie(path, "new-token\n\nold-token\n");
  AfterALook();
  EXPECT_EQ(token->Current(), "new-token");
  testing::ReplaceFileOrDie(path, "new-token\n");
  AfterALook();
  EXPECT_FALSE(copy.Accepts("old-token"));
  EXPECT_TRUE(copy.Accepts("new-token"));
  EXPECT_FALSE(copy.Accepts(""));
  EXPECT_FALSE(copy.Accepts("new-token\nold-token"));
}

TEST(BearerTokenTest, AFileThatBecomesEmptyOrGoesKeepsTheTokensReadBefore) {
  testing::TempDir dir;
  const std::string path = dir.Join("token");
  testing::ReplaceFileOrDie(path, "kept\n");
  auto token = BearerToken::FromFile(path, "--worker-token-file");
  ASSERT_TRUE(token.ok()) << token.status();
  testing::ReplaceFileOrDie(path, "\n \n");
  AfterALook();
  EXPECT_TRUE(token->Accepts("kept"));
  EXPECT_FALSE(token->Accepts(""));
  EXPECT_EQ(token->Current(), "kept");
  std::filesystem::remove(path);
  AfterALook();
  EXPECT_TRUE(token->Accepts("kept"));
  EXPECT_FALSE(token->empty());
  // Once it is back it is read again.
  testing::ReplaceFileOrDie(path, "renewed\n");
  AfterALook();
  EXPECT_EQ(token->Current(), "renewed");
}

TEST(BearerTokenTest, AFileWithoutATokenIsRefusedAtStartNamingTheFlag) {
  testing::TempDir dir;
  testing::ReplaceFileOrDie(dir.Join("empty"), " \n\n");
  auto empty = BearerToken::FromFile(dir.Join("empty"), "--worker-token-file");
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().message(), "--worker-token-file: '" + dir.Join("empty") + "' is empty");
  auto missing = BearerToken::FromFile(dir.Join("absent"), "--token-file");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(std::string(missing.status().message()).rfind("--token-file: ", 0), 0u) << missing.status();
  // No token accepts every call; a fixed one only itself.
  EXPECT_TRUE(BearerToken().empty());
  EXPECT_TRUE(BearerToken().Accepts("anything"));
  EXPECT_TRUE(BearerToken("").empty());
  EXPECT_TRUE(BearerToken("s3cret").Accepts("s3cret"));
  EXPECT_FALSE(BearerToken("s3cret").Accepts("s3cret "));
  EXPECT_FALSE(BearerToken("s3cret").Accepts("S3cret"));
  EXPECT_TRUE(BearerToken("a").Shares(BearerToken("a")));
  EXPECT_FALSE(BearerToken("a").Shares(BearerToken("b")));
}

TEST(BearerTokenTest, ATokenThatBothTheUsersAndTheWorkersFilesHoldIsRefusedOnBothSides) {
  testing::TempDir dir;
  testing::ReplaceFileOrDie(dir.Join("users"), "user\n");
  testing::ReplaceFileOrDie(dir.Join("workers"), "worker\n");
  auto users_file = BearerToken::FromFile(dir.Join("users"), "--token-file");
  auto workers_file = BearerToken::FromFile(dir.Join("workers"), "--worker-token-file");
  ASSERT_TRUE(users_file.ok() && workers_file.ok());
  const BearerToken users = users_file->Excluding(*workers_file);
  const BearerToken workers = workers_file->Excluding(*users_file);
  EXPECT_TRUE(users.Accepts("user"));
  EXPECT_FALSE(users.Accepts("worker"));
  EXPECT_TRUE(workers.Accepts("worker"));
  testing::ReplaceFileOrDie(dir.Join("workers"), "worker\nuser\n");
  AfterALook();
  EXPECT_FALSE(users.Accepts("user"));
  EXPECT_FALSE(workers.Accepts("user"));
  EXPECT_TRUE(workers.Accepts("worker"));
  testing::ReplaceFileOrDie(dir.Join("workers"), "worker\n");
  AfterALook();
  EXPECT_TRUE(users.Accepts("user"));
  // One token for both (no --worker-token-file) stays one.
  EXPECT_TRUE(users_file->Excluding(*users_file).Accepts("user"));
}

// The sample of `flag` in a scrape of `metrics`; -1 when there is none.
double ExpirySample(const std::shared_ptr<prometheus::Collectable>& metrics, const std::string& flag) {
  for (const std::string& line : testing::SplitLines(SerializeMetrics({metrics}))) {
    if (line.rfind("dfc_tls_certificate_expiry_timestamp_seconds{flag=\"" + flag + "\"", 0) == 0) {
      return std::stod(line.substr(line.rfind(' ') + 1));
    }
  }
  return -1;
}

// notAfter of the first certificate in `path`, as openssl and date(1) read it.
double OpensslExpiry(const std::string& path) {
  auto r = RunCommand("date -d \"$(openssl x509 -enddate -noout -in " + path + " | cut -d= -f2)\" +%s");
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.exit_code == 0 ? std::stod(r.out) : -2;
}

TEST(CertificateExpiryTest, EachFilesEarliestExpiryIsExportedAndFollowsARenewal) {
  Pki pki;
  Files files(pki, "both", "server1");
  testing::TempDir dir;
  auto metrics = CertificateExpiryMetrics({{"--tls-cert", files.security.tls_cert},
                                           {"--tls-ca", files.security.tls_ca},
                                           {"--coordinator-tls-ca", dir.Join("absent.pem")},
                                           {"--metrics-tls-cert", ""}});
  const double cert = OpensslExpiry(files.security.tls_cert);
  EXPECT_GT(cert, static_cast<double>(std::time(nullptr)) + 86400);  // made valid for 2 days
  EXPECT_EQ(ExpirySample(metrics, "--tls-cert"), cert);
  // A bundle: its earliest.
  EXPECT_EQ(ExpirySample(metrics, "--tls-ca"), std::min(OpensslExpiry(pki["ca1.pem"]), OpensslExpiry(pki["ca2.pem"])));
  EXPECT_EQ(ExpirySample(metrics, "--coordinator-tls-ca"), -1) << "a file that is not there has no sample";
  EXPECT_EQ(ExpirySample(metrics, "--metrics-tls-cert"), -1);
  // Renewed for 30 days: the next scrape says so.
  auto made = RunCommand("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout " +
                         dir.Join("renewed.key") + " -out " + dir.Join("renewed.pem") +
                         " -days 30 -subj /CN=renewed 2>&1");
  ASSERT_EQ(made.exit_code, 0) << made.out;
  Pki::Install(dir.Join("renewed.pem"), files.security.tls_cert);
  const double renewed = OpensslExpiry(files.security.tls_cert);
  EXPECT_GT(renewed, cert + 27 * 86400);
  EXPECT_EQ(ExpirySample(metrics, "--tls-cert"), renewed);
}

}  // namespace
}  // namespace dfc
