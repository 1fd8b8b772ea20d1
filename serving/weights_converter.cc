#include "serving/weights_converter.h"

#include <signal.h>
#include <sys/resource.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <new>
#include <thread>

#include <torch/torch.h>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/sandbox.h"
#include "common/status_macros.h"
#include "common/subprocess.h"
#include "common/utf8.h"
#include "models/checkpoint.h"
#include "models/inference.h"
#include "models/keras_h5.h"

namespace dfc {
namespace fs = std::filesystem;
namespace {

constexpr char kLog[] = "converter.log";
constexpr char kErrorPrefix[] = "error: ";
constexpr char kSandboxPrefix[] = "sandbox: ";

// The last `max` bytes of a file.
std::string Tail(const std::string& path, std::streamoff max) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return "";
  const std::streamoff size = f.tellg();
  const std::streamoff from = size > max ? size - max : 0;
  f.seekg(from);
  std::string s(static_cast<size_t>(size - from), '\0');
  f.read(s.data(), static_cast<std::streamsize>(s.size()));
  return s;
}

// The last line of `log` that starts with `prefix`, without it.
std::string LastLine(const std::string& log, const std::string& prefix) {
  std::string found;
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    if (absl::StartsWith(line, prefix)) found = std::string(line.substr(prefix.size()));
  }
  return ValidUtf8(found);
}

absl::Status Convert(const std::string& arch, const std::string& input, const std::string& out) {
  CheckpointMeta meta;
  meta.arch = arch;
  if (!LooksLikeHdf5(input)) {
    auto m = ReadCheckpointMeta(input);
    if (!m.ok()) return absl::InvalidArgumentError(absl::StrCat("weights: ", m.status().message()));
    if (m->arch != arch) {
      return absl::InvalidArgumentError(absl::StrCat("weights: the checkpoint is a ", m->arch, ", not a ", arch));
    }
    meta.epoch = m->epoch;
    meta.step = m->step;
  }
  auto model = LoadDetector(arch, input, {}, "cpu");
  if (!model.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("weights do not load as ", arch, ": ", model.status().message()));
  }
  return SaveWeightsFile(out, **model, meta.epoch);
}

}  // namespace

absl::Status ConvertWeights(const WeightsConverterOptions& o, const std::string& arch, const std::string& input,
                            const std::string& out, const std::string& subject, std::string* sandbox) {
  if (o.command.empty()) return absl::InternalError("no weights converter is configured");
  const std::string log = (fs::path(out).parent_path() / kLog).string();
  std::vector<std::string> argv = o.command;
  argv.insert(argv.end(), {arch, input, out, std::to_string(o.memory_bytes)});
  SubprocessOptions so = UntrustedInputChildOptions(std::move(argv));
  so.log_path = log;
  so.rlimits.insert(so.rlimits.end(), {{RLIMIT_CPU, static_cast<uint64_t>(o.cpu_seconds)},
                                       {RLIMIT_FSIZE, static_cast<uint64_t>(o.max_output_bytes)},
                                       {RLIMIT_NOFILE, 256}});
  auto child = Subprocess::Start(so);
  if (!child.ok()) {
    return absl::InternalError(absl::StrCat("cannot start the weights converter: ", child.status().message()));
  }
  const auto deadline = std::chrono::steady_clock::now() + o.timeout;
  bool timed_out = false;
  while (!child->Poll()) {
    if (!timed_out && std::chrono::steady_clock::now() >= deadline) {
      timed_out = true;
      child->Terminate(std::chrono::milliseconds(0));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const std::string tail = Tail(log, 8192);
  if (sandbox != nullptr) *sandbox = LastLine(tail, kSandboxPrefix);
  std::string error = LastLine(tail, kErrorPrefix);
  if (error.size() > 1024) error = absl::StrCat(ValidUtf8(error.substr(0, 1000)), "...");  // reaches the client
  const std::string limits = absl::StrCat("the converter's limits: ", o.memory_bytes >> 20, " MiB of memory, ",
                                          o.cpu_seconds, " s of CPU, ", o.timeout.count(), " s");
  if (timed_out) {
    return absl::InvalidArgumentError(
        absl::StrCat("weights: converting ", subject, " took longer than ", o.timeout.count(), " s (", limits, ")"));
  }
  const int sig = child->term_signal();
  if (sig == SIGXCPU) {
    return absl::InvalidArgumentError(absl::StrCat("weights: converting ", subject, " used more than ",
                                                   o.cpu_seconds, " s of CPU (", limits, ")"));
  }
  if (sig != 0) {
    return absl::InvalidArgumentError(absl::StrCat("weights: reading ", subject, " ended the converter with ",
                                                   SignalName(sig), " (", limits, ")"));
  }
  switch (child->exit_code()) {
    case 0:
      if (std::error_code ec; !fs::exists(out, ec)) return absl::InternalError("the weights converter exited without writing the weights");
      return absl::OkStatus();
    case 2:
      if (absl::StrContains(error, "alloc") || absl::StrContains(error, "memory")) {
        return absl::InvalidArgumentError(absl::StrCat(error, " (", limits, ")"));
      }
      return absl::InvalidArgumentError(error.empty() ? "weights: the converter refused them" : error);
    default:
      return absl::InternalError(absl::StrCat("the weights converter failed (exit status ", child->exit_code(),
                                              error.empty() ? "" : absl::StrCat(": ", error), ")"));
  }
}

int ConvertWeightsMain(int argc, char** argv) {
  auto fail = [](int code, absl::string_view message) {
    std::string line(message);
    for (char& c : line) c = c == '\n' ? ' ' : c;
    std::fprintf(stderr, "%s%s\n", kErrorPrefix, ValidUtf8(line).c_str());
    return code;
  };
  int64_t memory = 0;
  if (argc != 6 || !absl::SimpleAtoi(argv[5], &memory) || memory <= 0) {
    return fail(3, "usage: dfc-server --convert-weights ARCH INPUT OUT MEMORY_BYTES");
  }
  const std::string arch = argv[2], input = argv[3], out = argv[4];
  // The memory budget on top of what the binary and its libraries map.
  if (absl::Status st = LimitMemory(memory); !st.ok()) return fail(3, st.message());
  SandboxPolicy policy;
  policy.read_paths = SystemReadPaths();
  policy.read_paths.insert(policy.read_paths.end(), {input, "/dev/urandom"});
  policy.write_dirs = {fs::path(out).parent_path().string()};
  auto report = EnterSandbox(policy);
  if (!report.ok()) return fail(3, report.status().message());
  std::printf("%s%s\n", kSandboxPrefix, report->Describe().c_str());
  std::fflush(stdout);
  torch::set_num_threads(1);
  absl::Status st;
  try {
    st = Convert(arch, input, out);
  } catch (const std::bad_alloc&) {
    st = absl::InvalidArgumentError("weights: the file needs more memory than the converter may use");
  } catch (const std::exception& e) {
    st = absl::InvalidArgumentError(absl::StrCat("weights: ", e.what()));
  }
  return st.ok() ? 0 : fail(2, st.message());
}

}  // namespace dfc
