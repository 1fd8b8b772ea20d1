#include "data_shards/image_codec.h"

#include <cstring>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"

namespace dfc {
namespace {

uint32_t Be16(const unsigned char* p) { return (uint32_t{p[0]} << 8) | p[1]; }
uint32_t Be32(const unsigned char* p) { return (Be16(p) << 16) | Be16(p + 2); }
uint32_t Le32(const unsigned char* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

absl::Status PeekJpeg(const unsigned char* p, size_t n, int* w, int* h) {
  size_t i = 2;
  while (i + 4 <= n) {
    if (p[i] != 0xFF) return absl::InvalidArgumentError("corrupt JPEG: bad marker");
    unsigned char marker = p[i + 1];
    if (marker == 0xFF) {  // fill byte
      ++i;
      continue;
    }
    if (marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) {
      i += 2;
      continue;
    }
    uint32_t len = Be16(p + i + 2);
    bool sof = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 &&
               marker != 0xCC;
    if (sof) {
      if (i + 9 > n) break;
      *h = static_cast<int>(Be16(p + i + 5));
      *w = static_cast<int>(Be16(p + i + 7));
      return absl::OkStatus();
    }
    if (marker == 0xD9 || marker == 0xDA) break;
    i += 2 + len;
  }
  return absl::InvalidArgumentError("truncated JPEG: no frame header");
}

}  // namespace

absl::Status PeekImageSize(std::string_view bytes, int* width, int* height) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  if (n == 0) return absl::InvalidArgumentError("empty image");
  if (n >= 24 && std::memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) {
    if (std::memcmp(p + 12, "IHDR", 4) != 0) return absl::InvalidArgumentError("corrupt PNG header");
    *width = static_cast<int>(std::min<uint32_t>(Be32(p + 16), 1u << 30));
    *height = static_cast<int>(std::min<uint32_t>(Be32(p + 20), 1u << 30));
    return absl::OkStatus();
  }
  if (n >= 4 && p[0] == 0xFF && p[1] == 0xD8) return PeekJpeg(p, n, width, height);
  if (n >= 26 && p[0] == 'B' && p[1] == 'M') {
    *width = static_cast<int>(std::min<uint32_t>(Le32(p + 18), 1u << 30));
    int32_t hh = static_cast<int32_t>(Le32(p + 22));
    *height = static_cast<int>(std::min<int64_t>(hh < 0 ? -int64_t{hh} : hh, 1 << 30));
    return absl::OkStatus();
  }
  if (n >= 2 && p[0] == 'P' && p[1] >= '1' && p[1] <= '6') {
    // PPM/PGM: magic, then width and height as ASCII (comments skipped).
    size_t i = 2;
    int vals[2] = {0, 0};
    for (int& v : vals) {
      while (i < n && (std::isspace(p[i]) || p[i] == '#')) {
        if (p[i] == '#') while (i < n && p[i] != '\n') ++i;
        else ++i;
      }
      int64_t x = 0;
      while (i < n && std::isdigit(p[i]) && x < (1 << 30)) x = x * 10 + (p[i++] - '0');
      v = static_cast<int>(x);
    }
    *width = vals[0];
    *height = vals[1];
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError("not a supported image (expected JPEG, PNG, BMP or PPM)");
}

absl::StatusOr<RgbImage> DecodeImage(std::string_view bytes, const ImageLimits& limits) {
  if (bytes.size() > limits.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("image is ", bytes.size(),
                                                     " bytes, over the limit of ",
                                                     limits.max_bytes));
  }
  int w = 0, h = 0;
  if (absl::Status st = PeekImageSize(bytes, &w, &h); !st.ok()) return st;
  if (w <= 0 || h <= 0) return absl::InvalidArgumentError("image header has a zero dimension");
  if (int64_t{w} * h > limits.max_pixels) {
    return absl::ResourceExhaustedError(absl::StrCat("image is ", w, "x", h,
                                                     " pixels, over the limit of ",
                                                     limits.max_pixels));
  }
  // libjpeg decodes a cut-off JPEG into grey fill with only a warning; PIL
  // (and so Keras) refuses it. Refuse it too: a JPEG ends with EOI (FF D9),
  // possibly followed by a little padding.
  if (bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0xFF &&
      static_cast<unsigned char>(bytes[1]) == 0xD8) {
    const size_t tail = std::min<size_t>(bytes.size(), 4096);
    if (bytes.substr(bytes.size() - tail).find("\xFF\xD9") == std::string_view::npos) {
      return absl::InvalidArgumentError("truncated JPEG: no end-of-image marker");
    }
  }
  cv::Mat raw(1, static_cast<int>(bytes.size()), CV_8UC1,
              const_cast<char*>(bytes.data()));
  cv::Mat bgr;
  try {
    bgr = cv::imdecode(raw, cv::IMREAD_COLOR | cv::IMREAD_IGNORE_ORIENTATION);
  } catch (const cv::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("cannot decode image: ", e.what()));
  }
  if (bgr.empty()) return absl::InvalidArgumentError("cannot decode image: corrupt or truncated data");
  RgbImage out;
  out.width = bgr.cols;
  out.height = bgr.rows;
  out.pixels.resize(static_cast<size_t>(out.width) * out.height * 3);
  cv::Mat rgb(out.height, out.width, CV_8UC3, out.pixels.data());
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  return out;
}

namespace {

// PIL's NEAREST resize (Pillow Resample.c -> ImagingScaleAffine): source
// index (int)(scale * (i + 0.5)) with scale = (double)src / dst, computed in
// double exactly as Pillow does. OpenCV 4.6's INTER_NEAREST_EXACT is meant to
// match it but is off by one whenever (i + 0.5) * src / dst is an integer
// (a 512 px image resized to 256 samples the even pixels instead of the odd
// ones), so DFC does not use it.
std::vector<int> NearestTable(int src, int dst) {
  std::vector<int> table(static_cast<size_t>(dst));
  const double scale = static_cast<double>(src) / dst;
  for (int i = 0; i < dst; ++i) table[i] = std::min(src - 1, static_cast<int>(scale * (i + 0.5)));
  return table;
}

void ResizeNearestPil(const uint8_t* in, int width, int height, int size, uint8_t* out) {
  const std::vector<int> xs = NearestTable(width, size), ys = NearestTable(height, size);
  for (int y = 0; y < size; ++y) {
    const uint8_t* row = in + static_cast<size_t>(ys[y]) * width * 3;
    uint8_t* dst = out + static_cast<size_t>(y) * size * 3;
    for (int x = 0; x < size; ++x) std::memcpy(dst + x * 3, row + xs[x] * 3, 3);
  }
}

}  // namespace

RgbImage ResizeNearestExact(const RgbImage& src, int size) {
  RgbImage out;
  out.width = out.height = size;
  out.pixels.resize(static_cast<size_t>(size) * size * 3);
  ResizeNearestPil(src.pixels.data(), src.width, src.height, size, out.pixels.data());
  return out;
}

absl::Status DecodeResizeInto(std::string_view bytes, int size, uint8_t* out,
                              const ImageLimits& limits) {
  absl::StatusOr<RgbImage> img = DecodeImage(bytes, limits);
  if (!img.ok()) return img.status();
  if (img->width == size && img->height == size) {
    std::memcpy(out, img->pixels.data(), static_cast<size_t>(size) * size * 3);
  } else {
    ResizeNearestPil(img->pixels.data(), img->width, img->height, size, out);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> EncodeImage(const RgbImage& img, const std::string& ext, int quality) {
  cv::Mat rgb(img.height, img.width, CV_8UC3, const_cast<uint8_t*>(img.pixels.data()));
  cv::Mat bgr;
  cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
  std::vector<int> params;
  if (ext == ".jpg" || ext == ".jpeg") params = {cv::IMWRITE_JPEG_QUALITY, quality};
  std::vector<uchar> buf;
  if (!cv::imencode(ext, bgr, buf, params)) {
    return absl::InternalError(absl::StrCat("cannot encode image as ", ext));
  }
  return std::string(buf.begin(), buf.end());
}

}  // namespace dfc
