// `dfc synth` and `dfc shard [verify]`.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "clients/commands.h"
#include "common/atomic_file.h"
#include "common/cpus.h"
#include "common/learning_curves.h"
#include "common/progress.h"
#include "data_shards/dataset_scan.h"
#include "data_shards/shard_format.h"
#include "data_shards/synth.h"

namespace dfc {
namespace {

int DefaultThreads() { return UsableCpus(); }

// "1000" = records per shard; "64MB", "64MiB", "512K" = bytes per shard.
absl::Status ParseShardSize(const std::string& text, ShardWriterOptions* o) {
  std::string digits = text;
  int64_t mult = 0;
  for (const auto& [suffix, m] : std::vector<std::pair<std::string, int64_t>>{
           {"KiB", 1024}, {"MiB", 1 << 20}, {"GiB", int64_t{1} << 30}, {"KB", 1000}, {"MB", 1000000},
           {"GB", 1000000000}, {"K", 1024}, {"M", 1 << 20}, {"G", int64_t{1} << 30}}) {
    if (digits.size() > suffix.size() && digits.compare(digits.size() - suffix.size(), suffix.size(), suffix) == 0) {
      digits.resize(digits.size() - suffix.size());
      mult = m;
      break;
    }
  }
  int64_t n = 0;
  if (!absl::SimpleAtoi(digits, &n) || n <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("--shard-size: expected a record count or a size like 64MiB, got '",
                                                   text, "'"));
  }
  if (mult == 0) {
    o->max_records_per_shard = n;
    o->max_bytes_per_shard = 0;
  } else {
    o->max_bytes_per_shard = n * mult;
    o->max_records_per_shard = 0;
    if (o->max_bytes_per_shard < (int64_t{1} << 16)) {
      return absl::InvalidArgumentError(absl::StrCat("--shard-size: ", text, " is below the 64KiB minimum"));
    }
  }
  return absl::OkStatus();
}

struct SynthArgs {
  SynthOptions opt;
};

struct ShardArgs {
  std::string src, out, shard_size = "64MiB", format = "encoded";
  double validation_split = -1;
  bool validation_from_end = false;
  int image_size = 256;
  int threads = 0;
  std::string verify_dir;
};

int RunSynth(SynthArgs& a) {
  if (a.opt.threads <= 0) a.opt.threads = DefaultThreads();
  ProgressBar bar("synth", a.opt.count);
  a.opt.progress = [&](int64_t done, int64_t total) { bar.Update(done); };
  absl::Status st = GenerateSyntheticDataset(a.opt);
  bar.Finish();
  if (!st.ok()) return ReportError(st);
  std::printf("wrote %d images to %s (df/ and real/)\n", a.opt.count, a.opt.out_dir.c_str());
  return kExitOk;
}

int RunShard(const ShardArgs& a) {
  if (a.src.empty() || a.out.empty()) {
    return ReportError(absl::InvalidArgumentError(
        "shard: a source (SRC or --src) and --out are required (or use `dfc shard verify DIR`)"));
  }
  ScanOptions scan;
  scan.validation_split = a.validation_split;
  scan.validation_from_end = a.validation_from_end;
  auto ds = ScanDataset(a.src, scan);
  if (!ds.ok()) return ReportError(ds.status());
  ShardWriterOptions w;
  w.out_dir = a.out;
  w.image_size = a.image_size;
  w.format = a.format == "rgb8" ? RecordFormat::kRgb8 : RecordFormat::kEncoded;
  w.threads = a.threads > 0 ? a.threads : DefaultThreads();
  if (absl::Status st = ParseShardSize(a.shard_size, &w); !st.ok()) return ReportError(st);
  ProgressBar bar("shard", static_cast<int64_t>(ds->train.size() + ds->validation.size()));
  w.progress = [&](int64_t done, int64_t) { bar.Update(done); };
  auto m = WriteShards(*ds, a.src, w);
  bar.Finish();
  if (!m.ok()) return ReportError(m.status());
  std::printf("classes: ");
  for (size_t c = 0; c < m->classes.size(); ++c) std::printf("%s%s=%zu", c ? ", " : "", m->classes[c].c_str(), c);
  std::printf("\n");
  for (const auto& [split, per_class] : m->counts) {
    std::printf("%-10s %lld images (", split.c_str(), static_cast<long long>(m->Count(split)));
    for (size_t c = 0; c < per_class.size(); ++c) {
      std::printf("%s%s %lld", c ? ", " : "", m->classes[c].c_str(), static_cast<long long>(per_class[c]));
    }
    std::printf(")\n");
  }
  std::printf("shards: %zu in %s, source hash %s\n", m->shards.size(), a.out.c_str(), m->source_hash.c_str());
  for (const auto& [path, reason] : m->skipped) std::fprintf(stderr, "skipped %s: %s\n", path.c_str(), reason.c_str());
  if (!m->skipped.empty()) std::printf("skipped: %zu unreadable or undecodable images (listed in the manifest)\n", m->skipped.size());
  return kExitOk;
}

int RunPlot(const std::string& input, const std::string& out) {
  // A run directory or its metrics.jsonl.
  std::string path = input;
  std::error_code ec;
  if (std::filesystem::is_directory(input, ec)) path = (std::filesystem::path(input) / "metrics.jsonl").string();
  auto text = ReadFile(path, 64u << 20);
  if (!text.ok()) return ReportError(text.status());
  auto curves = ParseMetricsJsonl(*text);
  if (!curves.ok()) return ReportError(absl::InvalidArgumentError(absl::StrCat(path, ": ", curves.status().message())));
  if (absl::Status st = WriteFileAtomically(out, RenderLearningCurvesSvg(*curves, "DFC learning curves: " + input));
      !st.ok()) {
    return ReportError(st);
  }
  std::printf("wrote %s (%zu epochs)\n", out.c_str(), curves->epochs.size());
  return kExitOk;
}

int RunVerify(const std::string& dir) {
  auto report = VerifyShards(dir);
  if (!report.ok()) return ReportError(report.status());
  if (!report->ok) {
    std::printf("CORRUPT: shard %s, record at offset %llu: %s\n", report->bad_shard.c_str(),
                static_cast<unsigned long long>(report->bad_offset), report->reason.c_str());
    return kExitCorrupt;
  }
  std::printf("OK: %lld records in %lld shards verified\n", static_cast<long long>(report->records_checked),
              static_cast<long long>(report->shards_checked));
  return kExitOk;
}

}  // namespace

void AddSynthCommand(CLI::App& app, RunFn* run) {
  auto args = std::make_shared<SynthArgs>();
  CLI::App* cmd = app.add_subcommand("synth", "Write the built-in synthetic deepfake dataset (df/, real/)");
  cmd->add_option("--out", args->opt.out_dir, "Output directory")->required();
  cmd->add_option("--count", args->opt.count, "Number of images (half df, half real)")->check(CLI::Range(2, 10000000));
  cmd->add_option("--seed", args->opt.seed, "Random seed");
  cmd->add_option("--image-size", args->opt.image_size, "Image side in pixels")->check(CLI::Range(32, 2048));
  cmd->add_option("--threads", args->opt.threads, "Worker threads (0 = every CPU this process may use)")->check(CLI::Range(0, 1024));
  cmd->callback([run, args] { *run = [args] { return RunSynth(*args); }; });
}

void AddPlotCommand(CLI::App& app, RunFn* run) {
  auto in = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>("learning_curves.svg");
  CLI::App* cmd = app.add_subcommand("plot", "Plot learning curves (loss, accuracy, AUC per epoch) as SVG");
  cmd->add_option("metrics", *in, "A training output directory or its metrics.jsonl")->required();
  cmd->add_option("--out", *out, "SVG file to write");
  cmd->callback([run, in, out] { *run = [in, out] { return RunPlot(*in, *out); }; });
}

void AddShardCommand(CLI::App& app, RunFn* run) {
  auto args = std::make_shared<ShardArgs>();
  CLI::App* cmd = app.add_subcommand("shard", "Turn a class-folder dataset into checksummed shards");
  cmd->add_option("src,--src", args->src, "Dataset root: class folders, or train:test/ [+ validation/]");
  cmd->add_option("--out", args->out, "Output shard directory (must not hold shards yet)");
  cmd->add_option("--validation-split", args->validation_split,
                  "Fraction of each class held out, as Keras (default 0.2; 0 when validation/ exists)")
      ->check(CLI::Range(0.0, 0.99));
  cmd->add_flag("--validation-from-end", args->validation_from_end,
                "Hold out the last fraction of each class instead of the first (Keras takes the first)");
  cmd->add_option("--image-size", args->image_size, "Model input size recorded (and stored, for --format rgb8)")
      ->check(CLI::Range(8, 4096));
  cmd->add_option("--shard-size", args->shard_size, "Records per shard (1000) or bytes per shard (64MiB)");
  cmd->add_option("--format", args->format, "Record payload: encoded (source bytes) or rgb8 (decoded pixels)")
      ->check(CLI::IsMember({"encoded", "rgb8"}));
  cmd->add_option("--threads", args->threads, "Decode threads (0 = every CPU this process may use)")->check(CLI::Range(0, 1024));
  CLI::App* verify = cmd->add_subcommand("verify", "Check every record and shard checksum");
  verify->add_option("dir", args->verify_dir, "Shard directory")->required();
  verify->callback([run, args] { *run = [args] { return RunVerify(args->verify_dir); }; });
  cmd->callback([run, args, verify] {
    if (verify->parsed()) return;
    *run = [args] { return RunShard(*args); };
  });
}

}  // namespace dfc
