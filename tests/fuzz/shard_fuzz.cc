// libFuzzer target: a shard directory as `dfc train` and the loader read it.
// The input is a manifest.json, the line "--shard--", then the bytes that
// every shard file the manifest names holds (seeds: scripts/fuzz.sh makes
// them with `dfc shard`). Whatever the bytes, opening, verifying and loading must
// give records or a named error: no crash, no sanitizer report, and every
// label (of the index, and of each delivered record) is one the manifest's
// classes allow.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "data_shards/batch_loader.h"
#include "data_shards/dataset_scan.h"
#include "data_shards/shard_format.h"

namespace {

// One directory per process, removed at exit. Never destroyed: the exit
// handler that removes it runs after static destructors would have.
const std::string& Dir() {
  static const std::string* dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    auto* d = new std::string(std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/dfc-shard-fuzz-XXXXXX");
    if (::mkdtemp(d->data()) == nullptr) std::abort();
    std::atexit([] { std::filesystem::remove_all(Dir()); });
    return d;
  }();
  return *dir;
}

void Write(const std::string& path, std::string_view bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t cut = input.find("\n--shard--\n");
  if (cut == std::string_view::npos) return 0;
  const std::string& dir = Dir();
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string_view manifest = input.substr(0, cut);
  Write(dir + "/manifest.json", manifest);
  auto parsed = dfc::ManifestFromJson(std::string(manifest));
  if (parsed.ok()) {
    for (size_t s = 0; s < parsed->shards.size() && s < 8; ++s) Write(dir + "/" + parsed->shards[s].file, input.substr(cut + 11));
  }

  auto report = dfc::VerifyShards(dir);
  if (report.ok() && !report->ok && report->reason.empty()) std::abort();
  auto set = dfc::ShardSet::Open(dir);
  if (!set.ok()) return 0;
  const auto& m = (*set)->manifest();
  // The notebook recipe splits the train records by the labels of the
  // index, before any record is read (training/trainer.cc).
  std::vector<int32_t> labels;
  for (const dfc::RecordRef& ref : (*set)->Records("train")) labels.push_back(ref.label);
  dfc::KerasValidationMask(labels, static_cast<int>(m.classes.size()), 0.5, false);
  for (const char* split : {"train", "validation"}) {
    dfc::BatchLoaderOptions o;
    o.batch_size = 4;
    o.image_size = 16;
    o.threads = 1;
    o.shuffle = false;
    dfc::BatchLoader loader(set->get(), (*set)->Records(split), o);
    loader.StartEpoch(0);
    for (;;) {
      auto batch = loader.Next();
      if (!batch.ok()) {
        if (batch.status().message().empty()) std::abort();
        break;
      }
      if (!batch->has_value()) break;
      for (int32_t label : (*batch)->labels) {
        if (label < 0 || static_cast<size_t>(label) >= m.classes.size()) {
          std::fprintf(stderr, "record label %d outside the manifest's %zu classes\n", label, m.classes.size());
          std::abort();
        }
      }
    }
  }
  return 0;
}
