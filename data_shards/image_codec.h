#ifndef DFC_DATA_SHARDS_IMAGE_CODEC_H_
#define DFC_DATA_SHARDS_IMAGE_CODEC_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dfc {

// Limits applied before any pixel is decoded.
struct ImageLimits {
  // Largest encoded image accepted, in bytes.
  size_t max_bytes = size_t{32} << 20;
  // Largest width*height accepted, read from the header before decoding.
  int64_t max_pixels = int64_t{40} * 1000 * 1000;
};

// Most scans a JPEG may have. Each scan of a progressive JPEG is a pass over
// the whole image, and an all-zero scan takes a dozen bytes: a 160 KB file
// of 1,000 such scans over 4000x4000 pixels took 20 s to decode (Pillow
// too). Encoders write at most a few dozen (libjpeg's progression 10);
// libjpeg-turbo's TurboJPEG API refuses more than 500 for the same reason.
inline constexpr int kMaxJpegScans = 100;

// An 8-bit RGB image, row-major HWC.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;
};

// Width and height from a PNG, JPEG, BMP or PPM header, without decoding.
// INVALID_ARGUMENT when the bytes are not such an image or are truncated.
absl::Status PeekImageSize(std::string_view bytes, int* width, int* height);

// Decodes JPEG/PNG/BMP/PPM bytes into RGB (OpenCV, EXIF orientation ignored
// as PIL does). Errors name the reason: empty, too large, not an image.
absl::StatusOr<RgbImage> DecodeImage(std::string_view bytes, const ImageLimits& limits = {});

// Keras/PIL NEAREST resize: output pixel i samples source floor((i+0.5)*W/size),
// bit-exact with Pillow (OpenCV 4.6's INTER_NEAREST_EXACT is not; see .cc).
RgbImage ResizeNearestExact(const RgbImage& src, int size);

// Decode + resize to size x size into `out` (size*size*3 bytes), the one
// preprocessing path shared by training, prediction and evaluation.
absl::Status DecodeResizeInto(std::string_view bytes, int size, uint8_t* out,
                              const ImageLimits& limits = {});

// Encodes RGB as JPEG (quality 1..100) or PNG (quality ignored).
absl::StatusOr<std::string> EncodeImage(const RgbImage& img, const std::string& ext, int quality);

}  // namespace dfc

#endif  // DFC_DATA_SHARDS_IMAGE_CODEC_H_
