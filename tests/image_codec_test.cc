#include "data_shards/image_codec.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <jpeglib.h>

#include <gtest/gtest.h>

#include "tests/test_util.h"

namespace dfc {
namespace {

RgbImage Gradient(int w, int h) {
  RgbImage img{w, h, std::vector<uint8_t>(static_cast<size_t>(w) * h * 3)};
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) img.pixels[(y * w + x) * 3 + c] = static_cast<uint8_t>(y * 16 + x + c * 50);
  return img;
}


TEST(ImageCodecTest, PngRoundTripIsExactAndRgb) {
  RgbImage img = Gradient(5, 3);
  auto png = EncodeImage(img, ".png", 0);
  ASSERT_TRUE(png.ok());
  int w = 0, h = 0;
  ASSERT_TRUE(PeekImageSize(*png, &w, &h).ok());
  EXPECT_EQ(w, 5);
  EXPECT_EQ(h, 3);
  auto back = DecodeImage(*png);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->pixels, img.pixels);  // channel order survives encode + decode
}

TEST(ImageCodecTest, JpegHeaderSize) {
  auto jpg = EncodeImage(Gradient(7, 4), ".jpg", 90);
  ASSERT_TRUE(jpg.ok());
  int w = 0, h = 0;
  ASSERT_TRUE(PeekImageSize(*jpg, &w, &h).ok());
  EXPECT_EQ(w, 7);
  EXPECT_EQ(h, 4);
}

TEST(ImageCodecTest, NearestExactMatchesPil) {
  // PIL NEAREST samples source floor((i + 0.5) * W / size): 4 -> 2 takes 1 and 3.
  RgbImage img = Gradient(4, 4);
  RgbImage out = ResizeNearestExact(img, 2);
  auto at = [&](const RgbImage& im, int x, int y, int c) { return im.pixels[(y * im.width + x) * 3 + c]; };
  for (int y = 0; y < 2; ++y)
    for (int x = 0; x < 2; ++x)
      for (int c = 0; c < 3; ++c) EXPECT_EQ(at(out, x, y, c), at(img, 2 * x + 1, 2 * y + 1, c));
  // Upscaling 3 -> 7: floor((i + 0.5) * 3 / 7) = 0,0,1,1,1,2,2.
  RgbImage up = ResizeNearestExact(Gradient(3, 3), 7);
  const int src[7] = {0, 0, 1, 1, 1, 2, 2};
  for (int x = 0; x < 7; ++x) EXPECT_EQ(at(up, x, 0, 0), at(Gradient(3, 3), src[x], 0, 0)) << x;
  // 512 -> 256 takes the odd pixels, as Pillow does (OpenCV 4.6's
  // INTER_NEAREST_EXACT takes the even ones); 6 -> 3 takes 1, 3, 5.
  RgbImage wide{512, 1, std::vector<uint8_t>(512 * 3)};
  for (int x = 0; x < 512; ++x) wide.pixels[x * 3] = static_cast<uint8_t>(x / 2 + (x % 2) * 128);
  RgbImage half = ResizeNearestExact(wide, 256);
  for (int x = 0; x < 256; ++x) ASSERT_EQ(half.pixels[(0 * 256 + x) * 3], wide.pixels[(2 * x + 1) * 3]) << x;
  RgbImage six{6, 6, std::vector<uint8_t>(6 * 6 * 3)};
  for (int y = 0; y < 6; ++y)
    for (int x = 0; x < 6; ++x) six.pixels[(y * 6 + x) * 3] = static_cast<uint8_t>(10 * x);
  RgbImage three = ResizeNearestExact(six, 3);
  EXPECT_EQ(three.pixels[0], 10);
  EXPECT_EQ(three.pixels[3], 30);
  EXPECT_EQ(three.pixels[6], 50);
}

TEST(ImageCodecTest, HugeHeaderRejectedBeforeDecoding) {
  auto r = DecodeImage(testing::PngHeader(20000, 20000));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("20000x20000"), std::string::npos) << r.status();
}

TEST(ImageCodecTest, BadInputsNameTheReason) {
  auto text = DecodeImage("hello, this is not an image");
  ASSERT_FALSE(text.ok());
  EXPECT_NE(text.status().message().find("not a supported image"), std::string::npos);
  EXPECT_FALSE(DecodeImage("").ok());
  auto jpg = EncodeImage(Gradient(64, 64), ".jpg", 90);
  ASSERT_TRUE(jpg.ok());
  auto truncated = DecodeImage(jpg->substr(0, jpg->size() / 3));
  ASSERT_FALSE(truncated.ok());
  EXPECT_NE(truncated.status().message().find("truncated"), std::string::npos) << truncated.status();
  auto header_only = DecodeImage(jpg->substr(0, 20));
  ASSERT_FALSE(header_only.ok());
  ImageLimits small;
  small.max_bytes = 100;
  auto big = DecodeImage(*jpg, small);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.status().code(), absl::StatusCode::kResourceExhausted);
}

// Inputs found by tests/fuzz/image_fuzz.cc (scripts/fuzz.sh). Each once
// passed a size check by wrapping around; now each is refused by name.
TEST(ImageCodecTest, FuzzFoundHeadersAreRefusedByName) {
  // A BMP whose info-header size is 0xFFFFFFFF: 14 + size wrapped to 13 in
  // 32 bits, and the BI_BITFIELDS masks were read past the 56-byte input.
  std::string bmp(56, '\0');
  bmp[0] = 'B', bmp[1] = 'M';
  for (int k = 14; k < 18; ++k) bmp[k] = '\xff';             // header size
  bmp[18] = 2, bmp[22] = 2, bmp[26] = 1, bmp[28] = 32, bmp[30] = 3;  // 2x2, 32 bpp, BI_BITFIELDS
  auto r = DecodeImage(bmp);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("unsupported header"), std::string::npos) << r.status();

  // A PGM whose width has 21 digits: it was read as several numbers (the
  // digits after 2^30 started the next), so the header said one size and
  // the decoder another. Now it is one number, over the limit either way.
  const std::string pgm = "P5\n999999999999999999999 1\n255\n" + std::string(64, '\x7f');
  int w = 0, h = 0;
  ASSERT_TRUE(PeekImageSize(pgm, &w, &h).ok());
  EXPECT_EQ(w, 1 << 30);
  EXPECT_EQ(h, 1);
  auto limited = DecodeImage(pgm);
  ASSERT_FALSE(limited.ok());
  EXPECT_EQ(limited.status().code(), absl::StatusCode::kResourceExhausted) << limited.status();
  ImageLimits unlimited;
  unlimited.max_pixels = int64_t{1} << 40;
  auto pnm = DecodeImage(pgm, unlimited);
  ASSERT_FALSE(pnm.ok());
  EXPECT_NE(pnm.status().message().find("over 2^30"), std::string::npos) << pnm.status();
}

// `pixels` (w x h, `components` samples each, in colour space `in`) as a
// JPEG that libjpeg writes in colour space `as`, progressive or baseline.
std::string LibjpegEncode(const std::vector<uint8_t>& pixels, int w, int h, int components, J_COLOR_SPACE in,
                          J_COLOR_SPACE as, bool progressive) {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr err;
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buf, &size);
  cinfo.image_width = static_cast<JDIMENSION>(w);
  cinfo.image_height = static_cast<JDIMENSION>(h);
  cinfo.input_components = components;
  cinfo.in_color_space = in;
  jpeg_set_defaults(&cinfo);
  jpeg_set_colorspace(&cinfo, as);
  jpeg_set_quality(&cinfo, 90, TRUE);
  if (progressive) jpeg_simple_progression(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW r = const_cast<uint8_t*>(pixels.data()) + static_cast<size_t>(cinfo.next_scanline) * w * components;
    jpeg_write_scanlines(&cinfo, &r, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  std::string jpeg(reinterpret_cast<char*>(buf), size);
  std::free(buf);
  return jpeg;
}

// A progressive JPEG (libjpeg's progression: 10 scans) of a flat w x h
// image, its last scan then repeated `extra` times before the end. The
// scan is a dozen bytes (one run of empty blocks), each copy a pass over
// the whole image for the decoder.
std::string ProgressiveJpegWithRepeatedScan(int w, int h, int extra) {
  const std::vector<uint8_t> flat(static_cast<size_t>(w) * h * 3, 128);
  const std::string jpeg = LibjpegEncode(flat, w, h, 3, JCS_RGB, JCS_YCbCr, /*progressive=*/true);
  // Walk the markers to the last start-of-scan; its scan runs to the EOI.
  size_t i = 2, last_sos = 0;
  while (i + 4 <= jpeg.size()) {
    const auto at = [&](size_t k) { return static_cast<uint8_t>(jpeg[k]); };
    if (at(i + 1) == 0xD9) break;
    const size_t len = (size_t{at(i + 2)} << 8) | at(i + 3);
    if (at(i + 1) != 0xDA) {
      i += 2 + len;
      continue;
    }
    last_sos = i;
    i += 2 + len;
    while (!(at(i) == 0xFF && at(i + 1) != 0 && (at(i + 1) < 0xD0 || at(i + 1) > 0xD7))) ++i;  // entropy data
  }
  const size_t eoi = jpeg.size() - 2;
  std::string scan = jpeg.substr(last_sos, eoi - last_sos);
  std::string out = jpeg.substr(0, eoi);
  for (int k = 0; k < extra; ++k) out += scan;
  return out + jpeg.substr(eoi);
}

// A JPEG of thousands of scans decodes for minutes; past kMaxJpegScans it
// is refused at once, naming why. Fewer extra scans decode as before.
TEST(ImageCodecTest, AJpegOfTooManyScansIsRefused) {
  const std::string plain = ProgressiveJpegWithRepeatedScan(800, 600, 0);
  auto expected = DecodeImage(plain);
  ASSERT_TRUE(expected.ok()) << expected.status();
  const std::string some = ProgressiveJpegWithRepeatedScan(800, 600, 50);
  auto decoded = DecodeImage(some);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->pixels, expected->pixels);

  const std::string bomb = ProgressiveJpegWithRepeatedScan(800, 600, 5000);
  EXPECT_LT(bomb.size(), 100u * 1024) << "5,000 scans in so few bytes";
  auto refused = DecodeImage(bomb);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("cannot decode JPEG: more than 100 scans"), std::string::npos)
      << refused.status();
  std::vector<uint8_t> out(64 * 64 * 3);
  EXPECT_FALSE(DecodeResizeInto(bomb, 64, out.data()).ok());
}

// Every format and mode Pillow writes decodes to exactly Pillow's RGB pixels
// (the preprocessing Keras used), byte for byte.
TEST(ImageCodecTest, EveryFormatDecodesExactlyAsPillow) {
  testing::TempDir dir;
  auto gen = testing::RunCommand("/usr/bin/python3 " + testing::SourceDir() + "/tests/pil_formats.py " + dir.path());
  ASSERT_EQ(gen.exit_code, 0) << "needs python3-pil and python3-numpy (scripts/setup.sh): " << gen.err;
  int checked = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    if (e.path().extension() == ".raw") continue;
    const std::string name = e.path().filename().string();
    auto img = DecodeImage(testing::ReadFileOrDie(e.path().string()));
    ASSERT_TRUE(img.ok()) << name << ": " << img.status();
    EXPECT_EQ(img->width, 53) << name;
    EXPECT_EQ(img->height, 37) << name;
    const std::string pil = testing::ReadFileOrDie(e.path().string() + ".raw");
    ASSERT_EQ(pil.size(), img->pixels.size()) << name;
    EXPECT_EQ(std::memcmp(pil.data(), img->pixels.data(), pil.size()), 0) << name << " differs from Pillow";
    ++checked;
  }
  EXPECT_EQ(checked, 17);
}

// Photoshop writes CMYK JPEGs as YCCK (Adobe transform 2), which Pillow
// cannot write: libjpeg writes one here, Pillow decodes it for reference.
TEST(ImageCodecTest, AYcckJpegDecodesExactlyAsPillow) {
  testing::TempDir dir;
  const int w = 53, h = 37;
  std::vector<uint8_t> cmyk(static_cast<size_t>(w) * h * 4);
  for (size_t i = 0; i < cmyk.size(); ++i) cmyk[i] = static_cast<uint8_t>((i * 37 + (i / 4) % 11 * 9) & 0xFF);
  testing::WriteFileOrDie(dir.Join("ycck.jpg"), LibjpegEncode(cmyk, w, h, 4, JCS_CMYK, JCS_YCCK, false));
  testing::WriteFileOrDie(dir.Join("pil.py"), R"(
import sys
from PIL import Image
im = Image.open(sys.argv[1])
assert im.mode == "CMYK" and im.info.get("adobe_transform") == 2, (im.mode, im.info)
open(sys.argv[2], "wb").write(im.convert("RGB").tobytes())
)");
  auto pil = testing::RunCommand("/usr/bin/python3 " + dir.Join("pil.py") + " " + dir.Join("ycck.jpg") + " " +
                                 dir.Join("ycck.raw"));
  ASSERT_EQ(pil.exit_code, 0) << "needs python3-pil (scripts/setup.sh): " << pil.err;
  auto img = DecodeImage(testing::ReadFileOrDie(dir.Join("ycck.jpg")));
  ASSERT_TRUE(img.ok()) << img.status();
  const std::string expected = testing::ReadFileOrDie(dir.Join("ycck.raw"));
  ASSERT_EQ(expected.size(), img->pixels.size());
  EXPECT_EQ(std::memcmp(expected.data(), img->pixels.data(), expected.size()), 0) << "differs from Pillow";
}

TEST(ImageCodecTest, SharedSampleDecodes) {
  const std::string path = testing::SharedDir() + "/data/mesonet-samples/df/df00204.jpg";
  std::string bytes;
  try {
    bytes = testing::ReadFileOrDie(path);
  } catch (...) {
    GTEST_SKIP() << "shared data not present at " << path;
  }
  std::vector<uint8_t> out(256 * 256 * 3);
  ASSERT_TRUE(DecodeResizeInto(bytes, 256, out.data()).ok());
}

}  // namespace
}  // namespace dfc
