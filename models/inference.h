#ifndef DFC_MODELS_INFERENCE_H_
#define DFC_MODELS_INFERENCE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "data_shards/image_codec.h"
#include "models/detector.h"

namespace dfc {

// Builds `arch` and loads `weights` (a Keras .h5, a DFC checkpoint or a
// served-weights file, told apart by content), in eval mode on `device` ("cpu", "cuda:N"; empty: the
// default device).
absl::StatusOr<Detector> LoadDetector(const std::string& arch, const std::string& weights,
                                      const DetectorOptions& options = {}, const std::string& device = "");

// Builds `arch` and loads `weights`, which must be a served-weights file
// (common/weights_file.h: read by a bounds-checked parser alone, never by
// libhdf5 or LibTorch's archive reader; anything else is INVALID_ARGUMENT),
// in eval mode on `device`. `epoch` (if given) receives the file's epoch.
// dfc-server loads weights only through this.
absl::StatusOr<Detector> LoadServedDetector(const std::string& arch, const std::string& weights,
                                            const std::string& device = "", int64_t* epoch = nullptr);

// Checks a device name ("", "cpu", "cuda", "cuda:N") against this build and machine.
absl::Status CheckDevice(const std::string& device);

// Checks an inference precision ("fp32", "bf16", "fp16") for a device:
// fp16 autocast exists on CUDA only. INVALID_ARGUMENT names --precision.
absl::Status CheckInferencePrecision(const std::string& precision, const std::string& device);

// Logits for n preprocessed images (RGB HWC uint8 at the model's input size).
// `precision` "bf16"/"fp16" runs the forward pass under autocast (the weights
// stay fp32; the logits come back as fp32), as training does.
std::vector<float> PredictLogits(DetectorImpl& model, const uint8_t* pixels, int64_t n,
                                 const std::string& precision = "fp32");

// One prediction per encoded image; an undecodable image gets an error instead.
struct Prediction {
  absl::Status status;
  float p_real = 0;
  float logit = 0;
};
std::vector<Prediction> PredictEncoded(DetectorImpl& model, const std::vector<std::string>& images,
                                       const ImageLimits& limits = {}, const std::string& precision = "fp32");

}  // namespace dfc

#endif  // DFC_MODELS_INFERENCE_H_
