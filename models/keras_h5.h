#ifndef DFC_MODELS_KERAS_H5_H_
#define DFC_MODELS_KERAS_H5_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dfc {

class DetectorImpl;

// One array from a Keras weights file: shape as Keras stores it, float32 data.
struct H5Array {
  std::string name;  // short name: "kernel", "bias", "gamma", ...
  std::vector<int64_t> shape;
  std::vector<float> data;
};

struct H5Layer {
  std::string name;
  std::vector<H5Array> weights;  // in the file's weight_names order
};

// Reads every layer of a Keras HDF5 weights file (Keras 2 `save_weights` or
// `save` layout: `layer_names` on the root or on /model_weights, each layer
// group with `weight_names`). Layers without weights are included, empty.
absl::StatusOr<std::vector<H5Layer>> ReadKerasH5(const std::string& path);

// Writes a file in the Keras 2 `save_weights` layout (fixed-length string
// attributes, datasets at <layer>/<layer>/<weight>:0). Used by tests and by
// `dfc export`.
absl::Status WriteKerasH5(const std::string& path, const std::vector<H5Layer>& layers);

// Copies a Keras weights file into `model`: layers matched by name (Keras
// auto-numbered names such as conv2d_7 are matched by rank among their kind,
// so files saved after other models were built still load), every shape
// checked before anything is copied. Errors name the layer and both shapes.
absl::Status ImportKerasWeights(DetectorImpl& model, const std::string& path);

// The model's own weights as Keras layers, the inverse of ImportKerasWeights.
std::vector<H5Layer> ExportKerasLayers(DetectorImpl& model);

// True when the file starts with the HDF5 signature.
bool LooksLikeHdf5(const std::string& path);

}  // namespace dfc

#endif  // DFC_MODELS_KERAS_H5_H_
