// Loader throughput alone: records read, checksummed, decoded, resized and
// batched per second, with no trainer attached. Prints one JSON line.
#include <chrono>
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "data_shards/batch_loader.h"

int main(int argc, char** argv) {
  CLI::App app{"loader_bench"};
  std::string data;
  int threads = 1, batch = 32, image_size = 0, epochs = 1;
  app.add_option("--data", data, "Shard directory")->required();
  app.add_option("--threads", threads)->check(CLI::Range(1, 256));
  app.add_option("--batch", batch)->check(CLI::Range(1, 4096));
  app.add_option("--image-size", image_size, "0 = the manifest's")->check(CLI::Range(0, 4096));
  app.add_option("--epochs", epochs)->check(CLI::Range(1, 100));
  CLI11_PARSE(app, argc, argv);
  auto set = dfc::ShardSet::Open(data);
  if (!set.ok()) {
    std::fprintf(stderr, "%s\n", std::string(set.status().message()).c_str());
    return 2;
  }
  dfc::BatchLoaderOptions o;
  o.batch_size = batch;
  o.threads = threads;
  o.image_size = image_size > 0 ? image_size : (*set)->manifest().image_size;
  o.prefetch_batches = 2 * threads;
  dfc::BatchLoader loader(set->get(), (*set)->Records("train"), o);
  int64_t images = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int e = 0; e < epochs; ++e) {
    loader.StartEpoch(static_cast<uint64_t>(e));
    for (;;) {
      auto b = loader.Next();
      if (!b.ok()) {
        std::fprintf(stderr, "%s\n", std::string(b.status().message()).c_str());
        return 1;
      }
      if (!b->has_value()) break;
      images += (*b)->count;
    }
  }
  const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("{\"impl\": \"dfc-loader\", \"threads\": %d, \"image_size\": %d, \"record_format\": \"%s\", "
              "\"images\": %lld, \"images_per_second\": %.1f}\n",
              threads, o.image_size,
              (*set)->manifest().record_format == dfc::RecordFormat::kRgb8 ? "rgb8" : "encoded",
              static_cast<long long>(images), images / dt);
  return 0;
}
