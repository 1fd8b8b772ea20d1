// dfc-server: the evaluation tier. Serves EvaluationService (Evaluate,
// ImportModel, ListModels) and grpc.health.v1; models and job checkpoints
// are resolved through the coordinator's catalogue and read from the shared
// volume. Run one per GPU (or CPU node); clients spread streams over all
// replicas with round-robin.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <CLI/CLI.hpp>
#include <grpcpp/health_check_service_interface.h>

#include "absl/strings/str_cat.h"
#include "common/cpus.h"
#include "common/subprocess.h"
#include "models/inference.h"
#include "serving/batcher.h"
#include "common/http/metrics_endpoint.h"
#include "serving/evaluation_service.h"
#include "serving/model_catalog.h"
#include "serving/model_registry.h"
#include "serving/weights_converter.h"

namespace {
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

int Fail(const std::string& what) {
  std::fprintf(stderr, "dfc-server: %s\n", what.c_str());
  return 2;
}

// `file`'s tokens into *token (none when no file is given).
absl::Status ReadToken(const std::string& file, const std::string& flag, dfc::BearerToken* token) {
  if (file.empty()) return absl::OkStatus();
  auto t = dfc::BearerToken::FromFile(file, flag);
  if (!t.ok()) return t.status();
  *token = *t;
  return absl::OkStatus();
}
}  // namespace

// Long by design: the flags with their checks, then the wiring of the services,
// read top to bottom (a table more than logic).
int main(int argc, char** argv) {
  // The confined child that parses uploaded weights (weights_converter.h).
  if (argc > 1 && std::string(argv[1]) == "--convert-weights") return dfc::ConvertWeightsMain(argc, argv);
  CLI::App app{"dfc-server: serves DFC model evaluation (images in, predictions out)"};
  std::string listen = "127.0.0.1:50061";
  dfc::RpcSecurity sec;  // this server's endpoint (users' token)
  dfc::RpcSecurity upstream;  // the coordinator's catalogue (workers' token)
  upstream.flag_prefix = "--coordinator-";
  std::string coordinator;
  bool insecure = false;
  std::string advertise;
  app.add_option("--listen", listen, "Address to serve gRPC on");
  int max_rpc_threads = dfc::kDefaultMaxRpcThreads;
  app.add_option("--max-rpc-threads", max_rpc_threads,
                 "Calls served at once (each open stream holds a thread); beyond, RESOURCE_EXHAUSTED")
      ->check(CLI::Range(4, 65536));
  app.add_option("--advertise", advertise,
                 "host:port clients reach this replica on, announced to the coordinator (default: --listen with the "
                 "bound port; on 0.0.0.0 the host name)");
  app.add_option("--coordinator", coordinator, "Coordinator address (its model catalogue)")
      ->envname("DFC_COORDINATOR")->required();
  app.add_option("--tls-cert", sec.tls_cert, "Server certificate (PEM); enables TLS");
  app.add_option("--tls-key", sec.tls_key, "Server key (PEM)");
  app.add_option("--tls-ca", sec.tls_ca, "CA (PEM) that client certificates must chain to; requires them");
  std::string token_file, worker_token_file;
  app.add_option("--token-file", token_file,
                 "File holding the bearer token callers (users) must present (one per line: any is accepted; read "
                 "again when it changes)")
      ->check(CLI::ExistingFile);
  app.add_flag("--insecure", insecure, "Allow a non-loopback --listen without a token");
  app.add_option("--coordinator-tls-ca", upstream.tls_ca, "CA (PEM) of the coordinator's certificate; enables TLS");
  app.add_option("--coordinator-tls-cert", upstream.tls_cert, "Client certificate (PEM) for the coordinator");
  app.add_option("--coordinator-tls-key", upstream.tls_key, "Client key (PEM) for the coordinator");
  app.add_option("--worker-token-file", worker_token_file,
                 "File holding the token the coordinator's catalogue expects (the workers' token; the first line "
                 "is sent)")
      ->check(CLI::ExistingFile);
  dfc::ModelRegistryOptions serve;
  serve.precision.clear();  // chosen by the device unless given
  dfc::InferenceBatcher::Options batching;
  batching.max_batch = 0;  // default below: by device
  dfc::EvaluationOptions eval;
  int max_delay_us = 0;
  // Inference threads and decoders default to the CPUs this process may use.
  const dfc::CpuBudget cpus = dfc::UsableCpuBudget();
  dfc::DecoderPoolOptions decoding;
  decoding.processes = std::clamp(cpus.usable, 1, 64);
  int64_t max_image_bytes = static_cast<int64_t>(decoding.limits.max_bytes);
  app.add_option("--models-dir", serve.models_dir,
                 "Where imported weights are stored (the shared volume every replica and the coordinator see)")
      ->required();
  app.add_option("--device", serve.device, "Inference device: cpu or cuda:N (default: the first GPU if any, else cpu)");
  app.add_option("--precision", serve.precision,
                 "Forward pass: fp32, bf16 or fp16 (autocast, as in training; default bf16 on a GPU, fp32 on CPU)");
  app.add_option("--eval-threads", serve.threads, "Inference threads (0 = every CPU this process may use)")->check(CLI::Range(0, 1024));
  app.add_option("--eval-max-batch", batching.max_batch,
                 "Largest batch the batcher forms (default 8 on CPU, 64 on a GPU)")->check(CLI::Range(1, 1024));
  app.add_option("--eval-max-delay-us", max_delay_us,
                 "Longest an image waits for its batch to fill, in microseconds (0 = greedy: run whenever the model "
                 "is free, with whatever queued meanwhile)")->check(CLI::Range(0, 10000000));
  app.add_option("--eval-max-queued", batching.max_queued, "Images queued for inference across all streams")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--eval-max-in-flight", eval.max_in_flight_per_stream, "Unanswered images per stream")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--eval-max-streams", eval.max_streams, "Open Evaluate streams")->check(CLI::Range(1, 100000));
  app.add_option("--eval-max-image-bytes", max_image_bytes, "Largest encoded image accepted")
      ->check(CLI::Range(int64_t{1}, int64_t{dfc::kMaxMessageBytes} - 4096));
  app.add_option("--decode-processes", decoding.processes,
                 "Confined processes (dfc-decode) that decode clients' images (default: one per CPU this process may use); 0 decodes in "
                 "the server's own process, unconfined")->check(CLI::Range(0, 1024));
  int64_t decode_memory_mb = decoding.memory_bytes >> 20;
  int64_t decode_timeout_ms = decoding.timeout.count();
  app.add_option("--decode-memory-mb", decode_memory_mb, "Memory each decoder process may allocate, in MiB")
      ->check(CLI::Range(int64_t{64}, int64_t{1} << 20));
  app.add_option("--decode-timeout-ms", decode_timeout_ms,
                 "Longest one image may take to decode; then that image fails and its decoder is replaced")
      ->check(CLI::Range(int64_t{100}, int64_t{3600000}));
  app.add_option("--eval-max-loaded", serve.max_loaded, "Models kept loaded")->check(CLI::Range(1, 64));
  int64_t import_memory_mb = serve.converter.memory_bytes >> 20;
  int64_t import_timeout_s = serve.converter.timeout.count();
  app.add_option("--import-memory-mb", import_memory_mb,
                 "Memory the confined process that converts an uploaded weights file (or a job checkpoint) may use, in MiB")
      ->check(CLI::Range(int64_t{256}, int64_t{1} << 20));
  app.add_option("--import-cpu-s", serve.converter.cpu_seconds, "CPU seconds it may use")
      ->check(CLI::Range(1, 86400));
  app.add_option("--import-timeout-s", import_timeout_s, "Seconds it may take (then it is killed)")
      ->check(CLI::Range(int64_t{1}, int64_t{86400}));
  app.add_option("--import-max-concurrent", serve.max_converting, "Weights files converted at once (more wait)")
      ->check(CLI::Range(1, 64));
  dfc::MetricsFlags metrics_flags;
  metrics_flags.Add(app);
  CLI11_PARSE(app, argc, argv);
  batching.max_delay = std::chrono::microseconds(max_delay_us);
  serve.converter.command = {dfc::SelfExecutable(), "--convert-weights"};
  serve.converter.memory_bytes = import_memory_mb << 20;
  serve.converter.timeout = std::chrono::seconds(import_timeout_s);
  serve.converter.max_output_bytes = 2 * serve.max_import_bytes + (int64_t{64} << 20);
  decoding.limits.max_bytes = static_cast<size_t>(max_image_bytes);
  decoding.memory_bytes = decode_memory_mb << 20;
  decoding.timeout = std::chrono::milliseconds(decode_timeout_ms);
  if (decoding.processes > 0) {
    decoding.program = dfc::SiblingExecutable("dfc-decode");
  }
  if (absl::Status st = ReadToken(token_file, "--token-file", &sec.token); !st.ok()) {
    return Fail(std::string(st.message()));
  }
  if (absl::Status st = ReadToken(worker_token_file, "--worker-token-file", &upstream.token); !st.ok()) {
    return Fail(std::string(st.message()));
  }
  if (!dfc::IsLoopbackListen(listen) && sec.token.empty()) {
    if (!insecure) {
      return Fail(absl::StrCat("refusing to listen on ", listen, " without a token: anyone who reaches it could "
                               "import models and use the GPUs. Give --token-file, or --insecure"));
    }
    std::fprintf(stderr, "dfc-server: WARNING: listening on %s with no token (--insecure)\n", listen.c_str());
  }
  if (absl::Status st = dfc::CheckDevice(serve.device); !st.ok()) return Fail(std::string(st.message()));
  const bool gpu = serve.device.rfind("cuda", 0) == 0 || (serve.device.empty() && torch::cuda::is_available());
  if (batching.max_batch == 0) batching.max_batch = gpu ? 64 : 8;
  if (serve.precision.empty()) serve.precision = gpu ? "bf16" : "fp32";
  if (absl::Status st = dfc::CheckInferencePrecision(serve.precision, serve.device); !st.ok()) {
    return Fail(std::string(st.message()));
  }

  auto channel = dfc::MakeChannel(coordinator, upstream);
  if (!channel.ok()) return Fail(std::string(channel.status().message()));
  std::shared_ptr<dfc::ModelCatalog> catalog = dfc::NewGrpcModelCatalog(*channel, upstream);
  if (serve.threads == 0) serve.threads = cpus.usable;
  auto registry = dfc::ModelRegistry::Create(serve, catalog);
  if (!registry.ok()) return Fail(std::string(registry.status().message()));
  auto creds = dfc::MakeServerCredentials(sec);
  if (!creds.ok()) return Fail(std::string(creds.status().message()));

  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  auto metrics = std::make_shared<dfc::ServingMetrics>();
  batching.metrics = metrics.get();
  // Before any model loads: a fork of a small process is quicker.
  auto decoders = dfc::DecoderPool::Start(decoding);
  if (!decoders.ok()) {
    return Fail(absl::StrCat(decoders.status().message(), " (--decode-processes 0 decodes in this process instead)"));
  }
  dfc::InferenceBatcher batcher(batching);
  dfc::EvaluationServiceImpl evaluation(registry->get(), &batcher, decoders->get(), eval, sec.token,
                                        absl::StrCat(host, ":", ::getpid()), metrics.get());
  dfc::ModelRegistry* reg = registry->get();
  metrics->SetGauges([&evaluation] { return evaluation.open_streams(); }, [reg] { return reg->LoadedCount(); });
  dfc::DecoderPool* pool = decoders->get();
  metrics->SetDecodersReplaced([pool] { return pool->replaced(); });
  auto metrics_server = dfc::StartMetricsEndpoint(
      metrics_flags, {metrics},
      {{"--tls-cert", sec.tls_cert}, {"--tls-ca", sec.tls_ca}, {"--coordinator-tls-cert", upstream.tls_cert},
       {"--coordinator-tls-ca", upstream.tls_ca}},
      sec.tls_cert, sec.tls_key);
  if (!metrics_server.ok()) return Fail(std::string(metrics_server.status().message()));
  int port = 0;
  std::unique_ptr<grpc::Server> server = dfc::StartGrpcServer(listen, *creds, {&evaluation}, &port,
                                                              max_rpc_threads);
  if (!server) {
    std::fprintf(stderr, "dfc-server: %s\n", dfc::CannotListen(listen).c_str());
    return 1;
  }
  if (advertise.empty()) {
    std::string host = listen.substr(0, listen.rfind(':'));
    if (host == "0.0.0.0" || host == "[::]" || host.empty()) {
      char name[256] = {0};
      ::gethostname(name, sizeof(name) - 1);
      host = name;
    }
    advertise = absl::StrCat(host, ":", port);
  }
  // Not ready until the catalogue answers: a load balancer or a Kubernetes
  // readiness probe sends no streams to a replica that cannot resolve models.
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  health->SetServingStatus(false);
  std::printf("dfc-server listening on %s (device %s, %s, max batch %d, %d inference thread%s, catalogue %s)\n",
              dfc::BoundAddress(listen, port).c_str(),
              serve.device.empty() ? (gpu ? "cuda:0" : "cpu") : serve.device.c_str(), serve.precision.c_str(),
              batching.max_batch, serve.threads, serve.threads == 1 ? "" : "s", coordinator.c_str());
  std::printf("this process may use %s\n", cpus.Describe().c_str());
  std::printf("images are decoded %s\n",
              decoding.processes > 0
                  ? absl::StrCat("by ", decoding.processes, decoding.processes == 1 ? " dfc-decode process (" : " dfc-decode processes (",
                                 (*decoders)->confinement(), ")")
                        .c_str()
                  : (*decoders)->confinement().c_str());
  if (*metrics_server) std::printf("metrics: %s/metrics\n", (*metrics_server)->url().c_str());
  std::fflush(stdout);
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  bool ready = false;
  for (int tick = 0; !g_stop; ++tick) {
    if (tick % 10 == 0) {  // every 2 s
      absl::Status st = catalog->AnnounceServer(advertise);
      if (st.ok() != ready) {
        ready = st.ok();
        health->SetServingStatus(ready);
        std::fprintf(stderr, "dfc-server: %s\n",
                     ready ? "the model catalogue answers: SERVING"
                           : absl::StrCat("NOT_SERVING: ", st.message()).c_str());
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  metrics_server->reset();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  return 0;
}
