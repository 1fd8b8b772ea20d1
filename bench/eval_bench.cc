// Load generator for the Evaluate stream: N concurrent streams, each keeping
// up to W images outstanding (W = 1: a live feed that sends the next frame
// when the last answer came back). Prints one JSON line with images/s and the
// per-image latency (send to result) percentiles.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include "common/atomic_file.h"
#include "common/rpc/rpc_util.h"
#include "dfc/v1/dfc.grpc.pb.h"

namespace {
using Clock = std::chrono::steady_clock;

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"eval_bench: Evaluate stream load generator"};
  std::string address, model;
  std::vector<std::string> files;
  int streams = 1, window = 1, per_stream = 64, warmup = 8;
  app.add_option("--server,--coordinator", address,
                 "dfc-server address, IP:PORT,IP:PORT for several replicas (round-robin), or an older "
                 "coordinator that served Evaluate itself")->required();
  app.add_option("--model", model, "Imported model name")->required();
  app.add_option("--streams", streams)->check(CLI::Range(1, 1024));
  app.add_option("--window", window, "Images outstanding per stream")->check(CLI::Range(1, 1024));
  app.add_option("--per-stream", per_stream, "Timed images per stream")->check(CLI::Range(1, 1000000));
  app.add_option("--warmup", warmup, "Untimed images per stream first")->check(CLI::Range(0, 1000000));
  app.add_option("images", files, "Images to cycle through")->required();
  CLI11_PARSE(app, argc, argv);
  std::vector<std::string> images;
  for (const auto& f : files) {
    auto b = dfc::ReadFile(f);
    if (!b.ok()) {
      std::fprintf(stderr, "eval_bench: %s\n", std::string(b.status().message()).c_str());
      return 2;
    }
    images.push_back(*b);
  }
  auto target = dfc::ServerListTarget(address);
  if (!target.ok()) {
    std::fprintf(stderr, "eval_bench: %s\n", std::string(target.status().message()).c_str());
    return 2;
  }
  auto channel = dfc::MakeChannel(*target, {}, /*round_robin=*/true);
  if (!channel.ok()) return 2;
  // Every replica connected before the streams open, so round-robin spreads them.
  (*channel)->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto stub = dfc::v1::EvaluationService::NewStub(*channel);

  std::mutex mu;
  std::vector<double> latencies_ms;
  std::atomic<int> errors{0};
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  Clock::time_point t0, t1;
  std::vector<std::thread> threads;
  for (int s = 0; s < streams; ++s) {
    threads.emplace_back([&, s] {
      grpc::ClientContext ctx;
      auto stream = stub->Evaluate(&ctx);
      dfc::v1::EvaluateRequest head;
      head.mutable_model()->set_name(model);
      stream->Write(head);
      dfc::v1::EvaluateResponse resp;
      // The model header (after any "still loading" ones).
      while (stream->Read(&resp) && resp.has_model() && resp.model().state() == dfc::v1::MODEL_LOADING) {
      }
      const int total = warmup + per_stream;
      std::vector<Clock::time_point> sent(static_cast<size_t>(total));
      std::vector<double> mine;
      int next = 0, received = 0;
      auto send = [&](int i) {
        dfc::v1::EvaluateRequest r;
        r.set_id(std::to_string(i));
        r.set_image(images[static_cast<size_t>(s + i) % images.size()]);
        sent[static_cast<size_t>(i)] = Clock::now();
        stream->Write(r);
      };
      // Warm-up, then wait for every stream before the timed part.
      for (; next < std::min(warmup, window); ++next) send(next);
      while (received < warmup && stream->Read(&resp)) {
        ++received;
        if (next < warmup) send(next++);
      }
      ++ready;
      while (!go.load()) std::this_thread::yield();
      for (; next < total && next - received < window; ++next) send(next);
      while (received < total && stream->Read(&resp)) {
        const int id = std::stoi(resp.result().id());
        if (!resp.result().error().empty()) ++errors;
        mine.push_back(std::chrono::duration<double, std::milli>(Clock::now() - sent[static_cast<size_t>(id)]).count());
        ++received;
        if (next < total) send(next++);
      }
      stream->WritesDone();
      while (stream->Read(&resp)) {
      }
      stream->Finish();
      std::lock_guard<std::mutex> lock(mu);
      latencies_ms.insert(latencies_ms.end(), mine.begin(), mine.end());
    });
  }
  while (ready.load() < streams) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  t0 = Clock::now();
  go = true;
  for (auto& t : threads) t.join();
  t1 = Clock::now();
  const double seconds = std::chrono::duration<double>(t1 - t0).count();
  std::printf("{\"impl\": \"dfc\", \"streams\": %d, \"window\": %d, \"images\": %zu, \"errors\": %d, "
              "\"seconds\": %.3f, \"images_per_second\": %.1f, \"p50_ms\": %.1f, \"p99_ms\": %.1f}\n",
              streams, window, latencies_ms.size(), errors.load(), seconds,
              static_cast<double>(latencies_ms.size()) / seconds, Percentile(latencies_ms, 0.5),
              Percentile(latencies_ms, 0.99));
  return errors.load() == 0 ? 0 : 1;
}
