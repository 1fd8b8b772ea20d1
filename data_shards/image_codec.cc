#include "data_shards/image_codec.h"

#include <algorithm>
#include <cctype>
#include <csetjmp>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <vector>

#include <jpeglib.h>
#include <png.h>

#include "absl/strings/str_cat.h"

namespace dfc {
namespace {

uint32_t Be16(const unsigned char* p) { return (uint32_t{p[0]} << 8) | p[1]; }
uint32_t Be32(const unsigned char* p) { return (Be16(p) << 16) | Be16(p + 2); }
uint16_t Le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
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

// ---- JPEG (libjpeg-turbo, as Pillow: ISLOW DCT, fancy upsampling; EXIF
// orientation ignored) ----

struct JpegError {
  jpeg_error_mgr mgr;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void JpegErrorExit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

void JpegSilent(j_common_ptr, int) {}  // warnings (e.g. extraneous bytes) are not fatal, as in Pillow

// Called as libjpeg reads input: stops a JPEG past kMaxJpegScans scans (the
// check TurboJPEG makes for its TJFLAG_LIMITSCANS).
void JpegLimitScans(j_common_ptr cinfo) {
  auto* d = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (d->input_scan_number <= kMaxJpegScans) return;
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  std::snprintf(err->message, sizeof(err->message),
                "more than %d scans (decoding each is a pass over the whole image; encoders write a few dozen at most)",
                kMaxJpegScans);
  std::longjmp(err->jump, 1);
}

absl::Status DecodeJpeg(const unsigned char* p, size_t n, RgbImage* out) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = JpegErrorExit;
  err.mgr.emit_message = JpegSilent;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return absl::InvalidArgumentError(absl::StrCat("cannot decode JPEG: ", err.message));
  }
  jpeg_create_decompress(&cinfo);
  jpeg_progress_mgr progress{};
  progress.progress_monitor = JpegLimitScans;
  cinfo.progress = &progress;
  jpeg_mem_src(&cinfo, p, static_cast<unsigned long>(n));
  jpeg_read_header(&cinfo, TRUE);
  // Four components (CMYK, or YCCK that libjpeg turns into CMYK): Pillow
  // reads them as Adobe writes them, inverted, and convert("RGB") takes
  // R = (255 - K) - C * (255 - K) / 255 (its cmyk2rgb, rounded the same way).
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  out->width = static_cast<int>(cinfo.output_width);
  out->height = static_cast<int>(cinfo.output_height);
  out->pixels.resize(static_cast<size_t>(out->width) * out->height * 3);
  std::vector<uint8_t> cmyk_row(cmyk ? static_cast<size_t>(out->width) * 4 : 0);
  while (cinfo.output_scanline < cinfo.output_height) {
    uint8_t* rgb = out->pixels.data() + static_cast<size_t>(cinfo.output_scanline) * out->width * 3;
    JSAMPROW row = cmyk ? cmyk_row.data() : rgb;
    jpeg_read_scanlines(&cinfo, &row, 1);
    if (!cmyk) continue;
    for (int x = 0; x < out->width; ++x) {
      const uint8_t* stored = cmyk_row.data() + static_cast<size_t>(x) * 4;  // inverted C, M, Y, K
      const int nk = stored[3];                                               // 255 - K
      for (int c = 0; c < 3; ++c) {
        const int t = (255 - stored[c]) * nk + 128;                           // C * (255 - K), /255 rounded
        rgb[x * 3 + c] = static_cast<uint8_t>(std::clamp(nk - (((t >> 8) + t) >> 8), 0, 255));
      }
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return absl::OkStatus();
}

absl::StatusOr<std::string> EncodeJpeg(const RgbImage& img, int quality) {
  jpeg_compress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = JpegErrorExit;
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  if (setjmp(err.jump)) {
    jpeg_destroy_compress(&cinfo);
    std::free(buf);
    return absl::InternalError(absl::StrCat("cannot encode JPEG: ", err.message));
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, &buf, &size);
  cinfo.image_width = static_cast<JDIMENSION>(img.width);
  cinfo.image_height = static_cast<JDIMENSION>(img.height);
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, std::clamp(quality, 1, 100), TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<uint8_t*>(img.pixels.data()) + static_cast<size_t>(cinfo.next_scanline) * img.width * 3;
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  std::string out(reinterpret_cast<char*>(buf), size);
  jpeg_destroy_compress(&cinfo);
  std::free(buf);
  return out;
}

// ---- PNG (libpng): any bit depth and colour type to 8-bit RGB as Pillow's
// convert("RGB"): alpha dropped, 16-bit samples cut to their high byte
// (16-bit greyscale clipped at 255) ----

struct PngReader {
  const unsigned char* p;
  size_t n, pos;
};

void PngRead(png_structp png, png_bytep data, png_size_t len) {
  auto* r = static_cast<PngReader*>(png_get_io_ptr(png));
  if (r->pos + len > r->n) png_error(png, "truncated PNG data");
  std::memcpy(data, r->p + r->pos, len);
  r->pos += len;
}

void PngErrorFn(png_structp png, png_const_charp msg) {
  auto* message = static_cast<std::string*>(png_get_error_ptr(png));
  *message = msg;
  png_longjmp(png, 1);
}

void PngWarningFn(png_structp, png_const_charp) {}

absl::Status DecodePng(const unsigned char* p, size_t n, RgbImage* out) {
  std::string message;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &message, PngErrorFn, PngWarningFn);
  if (png == nullptr) return absl::ResourceExhaustedError("cannot decode PNG: out of memory");
  png_infop info = png_create_info_struct(png);
  PngReader reader{p, n, 0};
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, nullptr);
    return absl::InvalidArgumentError(absl::StrCat("cannot decode PNG: ", message));
  }
  png_set_read_fn(png, &reader, PngRead);
  png_read_info(png, info);
  const int color = png_get_color_type(png, info);
  const int depth = png_get_bit_depth(png, info);
  // Pillow opens 16-bit greyscale as mode I;16 and converts it to RGB by
  // clipping at 255; every other 16-bit PNG keeps the high byte.
  const bool gray16 = color == PNG_COLOR_TYPE_GRAY && depth == 16;
  if (gray16) {
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    const int w = static_cast<int>(png_get_image_width(png, info)), h = static_cast<int>(png_get_image_height(png, info));
    if (png_get_rowbytes(png, info) != static_cast<size_t>(w) * 2) png_error(png, "unexpected row layout");
    std::vector<uint8_t> wide(static_cast<size_t>(w) * h * 2);
    rows.resize(static_cast<size_t>(h));
    for (int y = 0; y < h; ++y) rows[y] = wide.data() + static_cast<size_t>(y) * w * 2;
    png_read_image(png, rows.data());
    png_read_end(png, nullptr);
    png_destroy_read_struct(&png, &info, nullptr);
    out->width = w;
    out->height = h;
    out->pixels.resize(static_cast<size_t>(w) * h * 3);
    for (size_t i = 0; i < static_cast<size_t>(w) * h; ++i) {
      const unsigned v = (unsigned{wide[2 * i]} << 8) | wide[2 * i + 1];
      std::memset(out->pixels.data() + 3 * i, static_cast<int>(std::min(v, 255u)), 3);
    }
    return absl::OkStatus();
  }
  if (depth == 16) png_set_strip_16(png);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (color == PNG_COLOR_TYPE_GRAY || color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  if (color & PNG_COLOR_MASK_ALPHA) png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_rowbytes(png, info) != static_cast<size_t>(png_get_image_width(png, info)) * 3) {
    png_error(png, "unexpected row layout");
  }
  out->width = static_cast<int>(png_get_image_width(png, info));
  out->height = static_cast<int>(png_get_image_height(png, info));
  out->pixels.resize(static_cast<size_t>(out->width) * out->height * 3);
  rows.resize(static_cast<size_t>(out->height));
  for (int y = 0; y < out->height; ++y) rows[y] = out->pixels.data() + static_cast<size_t>(y) * out->width * 3;
  png_read_image(png, rows.data());
  png_read_end(png, nullptr);
  png_destroy_read_struct(&png, &info, nullptr);
  return absl::OkStatus();
}

void PngWrite(png_structp png, png_bytep data, png_size_t len) {
  static_cast<std::string*>(png_get_io_ptr(png))->append(reinterpret_cast<const char*>(data), len);
}

void PngFlush(png_structp) {}

absl::StatusOr<std::string> EncodePng(const RgbImage& img) {
  std::string message, out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &message, PngErrorFn, PngWarningFn);
  if (png == nullptr) return absl::ResourceExhaustedError("cannot encode PNG: out of memory");
  png_infop info = png_create_info_struct(png);
  std::vector<png_bytep> rows(static_cast<size_t>(img.height));
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    return absl::InternalError(absl::StrCat("cannot encode PNG: ", message));
  }
  png_set_write_fn(png, &out, PngWrite, PngFlush);
  png_set_IHDR(png, info, static_cast<png_uint_32>(img.width), static_cast<png_uint_32>(img.height), 8,
               PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < img.height; ++y) {
    rows[y] = const_cast<uint8_t*>(img.pixels.data()) + static_cast<size_t>(y) * img.width * 3;
  }
  png_write_image(png, rows.data());
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return out;
}

// ---- BMP: uncompressed 24/32-bit and 1/4/8-bit palette images (BI_RGB, or
// BI_BITFIELDS with the standard 8-bit masks) ----

absl::Status DecodeBmp(const unsigned char* p, size_t n, RgbImage* out) {
  auto bad = [](const std::string& why) { return absl::InvalidArgumentError("cannot decode BMP: " + why); };
  if (n < 54) return bad("truncated header");
  const uint32_t data_offset = Le32(p + 10);
  const size_t header = Le32(p + 14);  // size_t: 14 + header must not wrap around
  if (header < 40 || 14 + header > n) return bad("unsupported header (OS/2 BMP?)");
  const int32_t width = static_cast<int32_t>(Le32(p + 18));
  const int32_t raw_height = static_cast<int32_t>(Le32(p + 22));
  const int bpp = Le16(p + 28);
  const uint32_t compression = Le32(p + 30);
  if (width <= 0 || raw_height == 0 || raw_height == INT32_MIN) return bad("zero dimension");
  const bool bottom_up = raw_height > 0;
  const int height = bottom_up ? raw_height : -raw_height;
  // Bounds that keep stride * height (and the pixel count) inside 64 bits.
  if (width > (1 << 30) || height > (1 << 30)) return bad("width or height over 2^30");
  if (compression == 3 && bpp == 32) {
    if (header < 52 || Le32(p + 54) != 0x00FF0000 || Le32(p + 58) != 0x0000FF00 || Le32(p + 62) != 0x000000FF) {
      return bad("BI_BITFIELDS masks other than 8-bit BGR are not supported");
    }
  } else if (compression != 0) {
    return bad("compressed (RLE) BMPs are not supported");
  }
  if (bpp != 1 && bpp != 4 && bpp != 8 && bpp != 24 && bpp != 32) return bad(absl::StrCat(bpp, " bits per pixel"));
  const size_t stride = ((static_cast<size_t>(width) * bpp + 31) / 32) * 4;
  if (data_offset > n || stride * static_cast<size_t>(height) > n - data_offset) return bad("truncated pixel data");
  std::vector<uint8_t> palette;  // RGB triples
  if (bpp <= 8) {
    uint32_t colors = Le32(p + 46);
    if (colors == 0) colors = 1u << bpp;
    if (colors > 256 || 14 + header + size_t{colors} * 4 > data_offset) return bad("bad palette");
    for (uint32_t i = 0; i < colors; ++i) {
      const unsigned char* c = p + 14 + header + i * 4;
      palette.insert(palette.end(), {c[2], c[1], c[0]});
    }
  }
  out->width = width;
  out->height = height;
  out->pixels.resize(static_cast<size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    const unsigned char* row = p + data_offset + stride * static_cast<size_t>(bottom_up ? height - 1 - y : y);
    uint8_t* dst = out->pixels.data() + static_cast<size_t>(y) * width * 3;
    for (int x = 0; x < width; ++x, dst += 3) {
      if (bpp >= 24) {
        const unsigned char* px = row + static_cast<size_t>(x) * (bpp / 8);
        dst[0] = px[2];
        dst[1] = px[1];
        dst[2] = px[0];
      } else {
        const int per_byte = 8 / bpp;
        const int shift = (per_byte - 1 - x % per_byte) * bpp;
        const unsigned index = (row[x / per_byte] >> shift) & ((1u << bpp) - 1);
        if (index * 3 + 2 >= palette.size()) return bad("pixel index outside the palette");
        std::memcpy(dst, palette.data() + index * 3, 3);
      }
    }
  }
  return absl::OkStatus();
}

// ---- PPM/PGM: binary P6 and P5, maxval up to 65535 (scaled to 8 bits as
// Pillow does) ----

// The next ASCII number of a PNM header from *i on, after whitespace and
// '#' comments (saturating at 2^30 + 1); false when there is none.
bool NextPnmNumber(const unsigned char* p, size_t n, size_t* i, int64_t* v) {
  while (*i < n && (std::isspace(p[*i]) || p[*i] == '#')) {
    if (p[*i] == '#') while (*i < n && p[*i] != '\n') ++*i;
    else ++*i;
  }
  if (*i >= n || !std::isdigit(p[*i])) return false;
  // Every digit is consumed (a long number is one number, not several);
  // the value saturates just above 2^30, which every caller refuses.
  *v = 0;
  for (; *i < n && std::isdigit(p[*i]); ++*i) *v = std::min<int64_t>(*v * 10 + (p[*i] - '0'), (int64_t{1} << 30) + 1);
  return true;
}

absl::Status DecodePnm(const unsigned char* p, size_t n, RgbImage* out) {
  auto bad = [](const std::string& why) { return absl::InvalidArgumentError("cannot decode PPM: " + why); };
  if (n < 2 || p[0] != 'P' || (p[1] != '5' && p[1] != '6')) return bad("only binary P5/P6 files are supported");
  const bool color = p[1] == '6';
  size_t i = 2;
  int64_t vals[3] = {0, 0, 0};
  for (int64_t& v : vals) {
    if (!NextPnmNumber(p, n, &i, &v)) return bad("malformed header");
  }
  if (i >= n || !std::isspace(p[i])) return bad("malformed header");
  ++i;  // exactly one whitespace byte before the samples
  const int64_t maxval = vals[2];
  if (vals[0] <= 0 || vals[1] <= 0 || maxval <= 0 || maxval > 65535) return bad("bad size or maxval");
  if (vals[0] > (1 << 30) || vals[1] > (1 << 30)) return bad("width or height over 2^30");
  const size_t channels = color ? 3 : 1, bytes_per = maxval > 255 ? 2 : 1;
  const auto pixels = static_cast<uint64_t>(vals[0] * vals[1]);  // <= 2^60
  if (pixels > (n - i) / (channels * bytes_per)) return bad("truncated pixel data");
  const size_t count = pixels * channels;
  out->width = static_cast<int>(vals[0]);
  out->height = static_cast<int>(vals[1]);
  out->pixels.resize(static_cast<size_t>(out->width) * out->height * 3);
  for (size_t k = 0; k < count; ++k) {
    int64_t v = bytes_per == 2 ? (p[i + 2 * k] << 8) | p[i + 2 * k + 1] : p[i + k];
    const auto b = static_cast<uint8_t>(maxval == 255 ? v : std::min<int64_t>(255, v * 255 / maxval));
    if (color) {
      out->pixels[k] = b;
    } else {
      std::memset(out->pixels.data() + k * 3, b, 3);
    }
  }
  return absl::OkStatus();
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
    int64_t vals[2] = {0, 0};
    for (int64_t& v : vals) NextPnmNumber(p, n, &i, &v);  // a missing one stays 0: "zero dimension"
    *width = static_cast<int>(std::min<int64_t>(vals[0], 1 << 30));
    *height = static_cast<int>(std::min<int64_t>(vals[1], 1 << 30));
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
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  RgbImage out;
  absl::Status st;
  if (p[0] == 0xFF) st = DecodeJpeg(p, bytes.size(), &out);
  else if (p[0] == 0x89) st = DecodePng(p, bytes.size(), &out);
  else if (p[0] == 'B') st = DecodeBmp(p, bytes.size(), &out);
  else st = DecodePnm(p, bytes.size(), &out);
  if (!st.ok()) return st;
  if (out.width != w || out.height != h) {
    return absl::InvalidArgumentError(absl::StrCat("cannot decode image: its header says ", w, "x", h,
                                                   " but the data is ", out.width, "x", out.height));
  }
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
  if (img.width <= 0 || img.height <= 0 ||
      img.pixels.size() != static_cast<size_t>(img.width) * img.height * 3) {
    return absl::InvalidArgumentError("cannot encode: the image is empty or its pixels do not match its size");
  }
  if (ext == ".jpg" || ext == ".jpeg") return EncodeJpeg(img, quality);
  if (ext == ".png") return EncodePng(img);
  return absl::InvalidArgumentError(absl::StrCat("cannot encode image as ", ext, " (use .jpg or .png)"));
}

}  // namespace dfc
