#include "models/inference.h"


#include "absl/strings/str_cat.h"
#include "common/metrics.h"
#include "common/status_macros.h"
#include "models/checkpoint.h"
#include "models/keras_h5.h"
#include "models/tensor_batch.h"

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

absl::StatusOr<Detector> LoadDetector(const std::string& arch, const std::string& weights,
                                      const DetectorOptions& options, const std::string& device_name) {
  DFC_RETURN_IF_ERROR(CheckDevice(device_name));
  DFC_ASSIGN_OR_RETURN(Detector model, MakeDetector(arch, options));
  if (LooksLikeHdf5(weights)) {
    DFC_RETURN_IF_ERROR(ImportKerasWeights(*model, weights));
  } else {
    DFC_RETURN_IF_ERROR(LoadCheckpoint(weights, *model, nullptr, false).status());
  }
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

std::vector<float> PredictLogits(DetectorImpl& model, const uint8_t* pixels, int64_t n) {
  torch::NoGradGuard no_grad;
  model.eval();
  const torch::Device device = model.parameters().front().device();
  torch::Tensor logits = model.forward(PixelsToTensor(pixels, n, model.input_size(), device)).to(torch::kCPU).contiguous();
  return std::vector<float>(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel());
}

std::vector<Prediction> PredictEncoded(DetectorImpl& model, const std::vector<std::string>& images,
                                       const ImageLimits& limits) {
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
  std::vector<float> logits = PredictLogits(model, pixels.data(), static_cast<int64_t>(ok.size()));
  for (size_t j = 0; j < ok.size(); ++j) {
    out[ok[j]].logit = logits[j];
    out[ok[j]].p_real = PRealFromLogit(logits[j]);
  }
  return out;
}

}  // namespace dfc
