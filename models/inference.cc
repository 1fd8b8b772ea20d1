#include "models/inference.h"


#include "absl/strings/str_cat.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "models/checkpoint.h"
#include "models/tensor_batch.h"
#include "models/precision.h"

namespace dfc {

absl::Status CheckDevice(const std::string& name) {
  if (name.empty() || name == "cpu") return absl::OkStatus();
  try {
    const torch::Device device(name);
    if (device.is_cuda()) {
      if (!torch::cuda::is_available()) {
        return absl::FailedPreconditionError(
            absl::StrCat("device '", name, "': no CUDA device is visible (or this is a CPU build of DFC)"));
      }
      if (device.has_index() && device.index() >= static_cast<int>(torch::cuda::device_count())) {
        return absl::InvalidArgumentError(
            absl::StrCat("device '", name, "': this machine has ", torch::cuda::device_count(), " CUDA device(s)"));
      }
    } else if (!device.is_cpu()) {
      return absl::InvalidArgumentError(absl::StrCat("device '", name, "': expected cpu or cuda:N"));
    }
  } catch (const c10::Error&) {
    return absl::InvalidArgumentError(absl::StrCat("device '", name, "': expected cpu or cuda:N"));
  }
  return absl::OkStatus();
}

namespace {

// Moves a loaded model to its device, in eval mode.
Detector PlaceForInference(Detector model, const std::string& device_name) {
  const torch::Device device = device_name.empty() ? DefaultDevice() : torch::Device(device_name);
  if (device.is_cuda()) {
    // Scores must match the CPU build (tested to 1e-4): no TF32 in inference.
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  model->to(device);
  model->eval();
  return model;
}

}  // namespace

absl::StatusOr<Detector> LoadDetector(const std::string& arch, const std::string& weights,
                                      const DetectorOptions& options, const std::string& device_name) {
  DFC_RETURN_IF_ERROR(CheckDevice(device_name));
  DFC_ASSIGN_OR_RETURN(Detector model, MakeDetector(arch, options));
  DFC_RETURN_IF_ERROR(LoadWeightsByContent(weights, *model));
  return PlaceForInference(std::move(model), device_name);
}

absl::StatusOr<Detector> LoadServedDetector(const std::string& arch, const std::string& weights,
                                            const std::string& device_name, int64_t* epoch) {
  DFC_RETURN_IF_ERROR(CheckDevice(device_name));
  DFC_ASSIGN_OR_RETURN(Detector model, MakeDetector(arch));
  CheckpointMeta meta;
  DFC_RETURN_IF_ERROR(LoadWeightsFile(weights, *model, &meta));
  if (epoch != nullptr) *epoch = meta.epoch;
  return PlaceForInference(std::move(model), device_name);
}

absl::Status CheckInferencePrecision(const std::string& precision, const std::string& device) {
  if (precision != "fp32" && precision != "bf16" && precision != "fp16") {
    return absl::InvalidArgumentError(absl::StrCat("--precision: '", precision, "' is not fp32, bf16 or fp16"));
  }
  const bool cuda = device.rfind("cuda", 0) == 0 || (device.empty() && torch::cuda::is_available());
  if (precision == "fp16" && !cuda) {
    return absl::InvalidArgumentError("--precision: fp16 needs a CUDA device (autocast on CPU supports bf16 only)");
  }
  return absl::OkStatus();
}

std::vector<float> PredictLogits(DetectorImpl& model, const uint8_t* pixels, int64_t n, const std::string& precision) {
  torch::NoGradGuard no_grad;
  model.eval();
  const torch::Device device = model.parameters().front().device();
  torch::Tensor input = PixelsToTensor(pixels, n, model.input_size(), device);
  torch::Tensor logits;
  {
    AutocastGuard amp(device.type(), AutocastType(precision));
    logits = model.forward(input);
  }
  logits = logits.to(torch::kCPU, torch::kFloat).contiguous();
  return std::vector<float>(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
}

std::vector<Prediction> PredictEncoded(DetectorImpl& model, const std::vector<std::string>& images,
                                       const ImageLimits& limits, const std::string& precision) {
  const int size = model.input_size();
  const size_t image_bytes = static_cast<size_t>(size) * size * 3;
  std::vector<Prediction> out(images.size());
  std::vector<uint8_t> pixels;
  std::vector<size_t> ok;
  for (size_t i = 0; i < images.size(); ++i) {
    pixels.resize((ok.size() + 1) * image_bytes);
    out[i].status = DecodeResizeInto(images[i], size, pixels.data() + ok.size() * image_bytes, limits);
    if (out[i].status.ok()) ok.push_back(i);
  }
  if (ok.empty()) return out;
  std::vector<float> logits = PredictLogits(model, pixels.data(), static_cast<int64_t>(ok.size()), precision);
  for (size_t j = 0; j < ok.size(); ++j) {
    out[ok[j]].logit = logits[j];
    out[ok[j]].p_real = PRealFromLogit(logits[j]);
  }
  return out;
}

}  // namespace dfc
