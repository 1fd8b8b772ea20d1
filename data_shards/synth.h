#ifndef DFC_DATA_SHARDS_SYNTH_H_
#define DFC_DATA_SHARDS_SYNTH_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"

namespace dfc {

struct SynthOptions {
  std::string out_dir;
  // Total images, split evenly between df/ and real/.
  int count = 2000;
  uint64_t seed = 1;
  int image_size = 256;
  int threads = 2;
  std::function<void(int64_t, int64_t)> progress;
};

// Writes the built-in synthetic dataset in the MesoNet layout (OUT/df, OUT/real).
// Every image is a procedurally drawn face with sensor noise, JPEG-compressed.
// A `df` image additionally goes through a face-swap-like pipeline: the face
// region is re-rendered at low resolution, upscaled, colour-shifted and blended
// back with a feathered mask, then recompressed. Strengths are randomised so
// that some fakes are subtle. Deterministic in (seed, index).
absl::Status GenerateSyntheticDataset(const SynthOptions& options);

}  // namespace dfc

#endif  // DFC_DATA_SHARDS_SYNTH_H_
