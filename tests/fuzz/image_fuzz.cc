// libFuzzer target: the image decoder every training, prediction and
// evaluation path goes through (dfc-server decodes what clients send).
// Any input must give an image or a named error: no crash, no sanitizer
// report, no allocation past the limits. scripts/fuzz.sh builds and runs it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "data_shards/image_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  dfc::ImageLimits limits;
  limits.max_pixels = 4 << 20;  // the decoder's own limit, kept small for speed
  int w = 0, h = 0;
  // A header may say 0 (DecodeImage refuses it), never less.
  if (dfc::PeekImageSize(bytes, &w, &h).ok() && (w < 0 || h < 0)) std::abort();
  auto img = dfc::DecodeImage(bytes, limits);
  if (img.ok()) {
    if (img->width <= 0 || img->height <= 0 ||
        img->pixels.size() != static_cast<size_t>(img->width) * static_cast<size_t>(img->height) * 3) {
      std::abort();
    }
    if (int64_t{img->width} * img->height > limits.max_pixels) std::abort();
  } else if (img.status().message().empty()) {
    std::abort();
  }
  std::vector<uint8_t> out(32 * 32 * 3);
  auto st = dfc::DecodeResizeInto(bytes, 32, out.data(), limits);
  if (st.ok() != img.ok()) std::abort();  // the same bytes decode the same way on both paths
  return 0;
}
