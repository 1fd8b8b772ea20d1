#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_join.h"
#include "clients/commands.h"
#include "common/atomic_file.h"
#include "common/cpus.h"
#include "models/inference.h"

namespace dfc {
namespace {

struct PredictArgs {
  std::string model;
  std::string weights;
  std::vector<std::string> images;
  int batch_size = 32;
  int threads = 0;
  std::string precision = "fp32";  // the reference: parity checks compare fp32
};

int RunPredict(const PredictArgs& a) {
  torch::set_num_threads(a.threads > 0 ? a.threads : UsableCpus());
  if (absl::Status st = CheckInferencePrecision(a.precision, ""); !st.ok()) return ReportError(st);
  auto model = LoadDetector(a.model, a.weights);
  if (!model.ok()) return ReportError(model.status());
  int failures = 0;
  ImageLimits limits;
  for (size_t begin = 0; begin < a.images.size(); begin += static_cast<size_t>(a.batch_size)) {
    const size_t end = std::min(a.images.size(), begin + static_cast<size_t>(a.batch_size));
    std::vector<std::string> encoded(end - begin);
    std::vector<absl::Status> read_status(end - begin);
    for (size_t i = begin; i < end; ++i) {
      auto bytes = ReadFile(a.images[i], limits.max_bytes);
      if (bytes.ok()) encoded[i - begin] = std::move(*bytes);
      else read_status[i - begin] = bytes.status();
    }
    std::vector<Prediction> preds = PredictEncoded(**model, encoded, limits, a.precision);
    for (size_t i = begin; i < end; ++i) {
      const absl::Status& st = read_status[i - begin].ok() ? preds[i - begin].status : read_status[i - begin];
      if (!st.ok()) {
        std::fprintf(stderr, "dfc: %s: %s\n", a.images[i].c_str(), std::string(st.message()).c_str());
        ++failures;
        continue;
      }
      std::printf("%s\t%.6f\t%.6f\n", a.images[i].c_str(), preds[i - begin].p_real, preds[i - begin].logit);
    }
    std::fflush(stdout);
  }
  return failures == 0 ? kExitOk : kExitPartial;
}

}  // namespace

void AddPredictCommand(CLI::App& app, RunFn* run) {
  auto args = std::make_shared<PredictArgs>();
  CLI::App* cmd = app.add_subcommand("predict", kPredictAbout);
  cmd->add_option("--model", args->model, "Architecture: mesoinception4, meso4 or resnet50-vggface")
      ->required()
      ->check(CLI::IsMember(DetectorNames()));
  cmd->add_option("--weights", args->weights, "Keras .h5 weights or a DFC checkpoint")->required();
  cmd->add_option("images", args->images, "Image files (JPEG, PNG, BMP, PPM)")->required();
  cmd->add_option("--batch-size", args->batch_size, "Images per forward pass")->check(CLI::Range(1, 1024));
  cmd->add_option("--threads", args->threads, "Intra-op threads (0 = every CPU this process may use)")->check(CLI::Range(0, 1024));
  cmd->add_option("--precision", args->precision,
                  "Forward pass: fp32 (default, the reference), bf16 or fp16 (autocast; fp16 on CUDA only)");
  cmd->callback([run, args] { *run = [args] { return RunPredict(*args); }; });
}

}  // namespace dfc
