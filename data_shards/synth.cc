#include "data_shards/synth.h"

#include <atomic>
#include <cmath>
#include <filesystem>
#include <thread>
#include <vector>

#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "common/atomic_file.h"
#include "data_shards/image_codec.h"
#include "data_shards/shuffle.h"

namespace dfc {
namespace fs = std::filesystem;
namespace {

// Uniform doubles from SplitMix64.
class Uniform {
 public:
  explicit Uniform(uint64_t seed) : rng_(seed) {}
  double operator()(double lo, double hi) {
    return lo + (hi - lo) * (static_cast<double>(rng_.Next() >> 11) * 0x1.0p-53);
  }
  int Int(int lo, int hi) { return lo + static_cast<int>(rng_.Below(static_cast<uint64_t>(hi - lo + 1))); }

 private:
  SplitMix64 rng_;
};

cv::Scalar Jitter(Uniform& u, cv::Scalar base, double amount) {
  return cv::Scalar(std::clamp(base[0] + u(-amount, amount), 0.0, 255.0),
                    std::clamp(base[1] + u(-amount, amount), 0.0, 255.0),
                    std::clamp(base[2] + u(-amount, amount), 0.0, 255.0));
}

struct Face {
  cv::Point center;
  cv::Size axes;
};

// Draws a face-like picture (BGR) and returns where the face is.
Face DrawFace(Uniform& u, cv::RNG& noise_rng, int s, cv::Mat* img) {
  // Background: a two-colour vertical gradient with some blobs.
  cv::Scalar top = Jitter(u, cv::Scalar(128, 128, 128), 110);
  cv::Scalar bottom = Jitter(u, cv::Scalar(128, 128, 128), 110);
  *img = cv::Mat(s, s, CV_8UC3);
  for (int y = 0; y < s; ++y) {
    double t = static_cast<double>(y) / (s - 1);
    cv::Scalar c = top * (1 - t) + bottom * t;
    img->row(y).setTo(c);
  }
  for (int i = 0, n = u.Int(2, 6); i < n; ++i) {
    cv::circle(*img, cv::Point(u.Int(0, s), u.Int(0, s)), u.Int(s / 16, s / 4),
               Jitter(u, cv::Scalar(128, 128, 128), 120), cv::FILLED, cv::LINE_AA);
  }
  static const cv::Scalar kSkins[] = {{190, 210, 240}, {150, 180, 225}, {110, 150, 200},
                                      {80, 110, 160},  {60, 80, 120},   {170, 190, 220}};
  const cv::Scalar skin = Jitter(u, kSkins[u.Int(0, 5)], 12);
  Face f;
  f.center = cv::Point(s / 2 + u.Int(-s / 14, s / 14), s / 2 + u.Int(-s / 14, s / 14));
  f.axes = cv::Size(static_cast<int>(s * u(0.24, 0.32)), static_cast<int>(s * u(0.31, 0.40)));
  // Hair, neck, face.
  const cv::Scalar hair = Jitter(u, cv::Scalar(40, 50, 60), 40);
  cv::ellipse(*img, f.center - cv::Point(0, f.axes.height / 4), cv::Size(f.axes.width * 11 / 10, f.axes.height),
              0, 180, 360, hair, cv::FILLED, cv::LINE_AA);
  cv::rectangle(*img, cv::Point(f.center.x - f.axes.width / 2, f.center.y),
                cv::Point(f.center.x + f.axes.width / 2, s), skin * 0.85, cv::FILLED);
  cv::ellipse(*img, f.center, f.axes, u(-8, 8), 0, 360, skin, cv::FILLED, cv::LINE_AA);
  // Shading across the face.
  cv::Mat shade(s, s, CV_8UC3, cv::Scalar(0, 0, 0));
  cv::ellipse(shade, f.center + cv::Point(static_cast<int>(f.axes.width * u(-0.5, 0.5)), 0),
              cv::Size(f.axes.width / 2, f.axes.height * 3 / 4), 0, 0, 360, cv::Scalar(25, 25, 25), cv::FILLED);
  cv::GaussianBlur(shade, shade, cv::Size(0, 0), s / 20.0);
  cv::subtract(*img, shade, *img);
  // Eyes, brows, nose, mouth.
  const int ex = f.axes.width * 2 / 5, ey = f.axes.height / 5;
  const int eye_w = std::max(3, f.axes.width / 6), eye_h = std::max(2, f.axes.height / 14);
  const cv::Scalar iris = Jitter(u, cv::Scalar(70, 60, 40), 50);
  for (int side : {-1, 1}) {
    cv::Point e(f.center.x + side * ex, f.center.y - ey);
    cv::ellipse(*img, e, cv::Size(eye_w, eye_h), 0, 0, 360, cv::Scalar(235, 235, 235), cv::FILLED, cv::LINE_AA);
    cv::circle(*img, e + cv::Point(u.Int(-2, 2), 0), eye_h, iris, cv::FILLED, cv::LINE_AA);
    cv::circle(*img, e, std::max(1, eye_h / 2), cv::Scalar(15, 15, 15), cv::FILLED, cv::LINE_AA);
    cv::line(*img, e + cv::Point(-eye_w, -eye_h * 2 - u.Int(0, 3)), e + cv::Point(eye_w, -eye_h * 2 - u.Int(0, 3)),
             hair, std::max(2, s / 80), cv::LINE_AA);
  }
  cv::line(*img, f.center + cv::Point(0, -ey / 2), f.center + cv::Point(u.Int(-3, 3), f.axes.height / 6),
           skin * 0.7, std::max(2, s / 100), cv::LINE_AA);
  cv::ellipse(*img, f.center + cv::Point(0, f.axes.height * 11 / 20),
              cv::Size(std::max(1, f.axes.width / 3 + u.Int(-4, 4)), std::max(1, f.axes.height / 10 + u.Int(0, 4))), 0, 0, 180,
              Jitter(u, cv::Scalar(80, 80, 170), 30), std::max(2, s / 64), cv::LINE_AA);
  // Skin texture and sensor noise: the high-frequency detail that a face swap loses.
  cv::Mat noise(s, s, CV_16SC3);
  noise_rng.fill(noise, cv::RNG::NORMAL, cv::Scalar::all(0), cv::Scalar::all(u(2.0, 9.0)));
  cv::Mat img16;
  img->convertTo(img16, CV_16SC3);
  img16 += noise;
  img16.convertTo(*img, CV_8UC3);
  return f;
}

// The face-swap pipeline: low-resolution re-render, upscale, colour shift,
// feathered blend.
void FakeFace(Uniform& u, const Face& f, int s, cv::Mat* img) {
  const double factor = u(1.3, 3.2);
  cv::Mat small, up;
  cv::resize(*img, small, cv::Size(), 1.0 / factor, 1.0 / factor, cv::INTER_AREA);
  cv::resize(small, up, img->size(), 0, 0, cv::INTER_LINEAR);
  cv::Mat shifted;
  up.convertTo(shifted, CV_32FC3);
  const cv::Scalar shift(u(-12, 12), u(-12, 12), u(-12, 12));
  shifted += shift;
  cv::Mat mask(s, s, CV_32FC1, cv::Scalar(0));
  cv::ellipse(mask, f.center, cv::Size(f.axes.width * 9 / 10, f.axes.height * 9 / 10), 0, 0, 360,
              cv::Scalar(1), cv::FILLED);
  cv::GaussianBlur(mask, mask, cv::Size(0, 0), s * u(0.02, 0.05));
  cv::Mat orig;
  img->convertTo(orig, CV_32FC3);
  cv::Mat mask3;
  cv::merge(std::vector<cv::Mat>{mask, mask, mask}, mask3);
  cv::Mat blended = shifted.mul(mask3) + orig.mul(cv::Scalar::all(1.0) - mask3);
  blended.convertTo(*img, CV_8UC3);
}

// JPEG bytes of a BGR image, through the project's codec.
absl::StatusOr<std::string> EncodeBgrJpeg(const cv::Mat& bgr, int quality) {
  RgbImage rgb;
  rgb.width = bgr.cols;
  rgb.height = bgr.rows;
  rgb.pixels.resize(static_cast<size_t>(bgr.cols) * bgr.rows * 3);
  cv::Mat view(bgr.rows, bgr.cols, CV_8UC3, rgb.pixels.data());
  cv::cvtColor(bgr, view, cv::COLOR_BGR2RGB);
  return EncodeImage(rgb, ".jpg", quality);
}

absl::Status WriteJpeg(const cv::Mat& img, int quality, const std::string& path) {
  auto jpeg = EncodeBgrJpeg(img, quality);
  if (!jpeg.ok()) return jpeg.status();
  return WriteFileAtomically(path, *jpeg);
}

absl::Status MakeOneOrThrow(const SynthOptions& opt, int index) {
  const bool fake = index % 2 == 0;
  const uint64_t stream = opt.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(index);
  Uniform u(stream);
  cv::RNG noise_rng(stream ^ 0xD1B54A32D192ED03ULL);
  cv::Mat img;
  const int s = opt.image_size;
  Face face = DrawFace(u, noise_rng, s, &img);
  // Some real photos are soft all over (focus, motion): blur alone must not
  // give a fake away, only blur that stops at the face's edge.
  if (!fake && u(0, 1) < 0.35) cv::GaussianBlur(img, img, cv::Size(0, 0), u(0.4, 1.2));
  if (fake) {
    // The swapped face was itself once compressed, then pasted and saved again.
    auto jpeg = EncodeBgrJpeg(img, u.Int(70, 95));
    if (!jpeg.ok()) return jpeg.status();
    auto decoded = DecodeImage(*jpeg);
    if (!decoded.ok()) return decoded.status();
    cv::cvtColor(cv::Mat(s, s, CV_8UC3, decoded->pixels.data()), img, cv::COLOR_RGB2BGR);
    FakeFace(u, face, s, &img);
    // Careful forgers add grain back over the whole frame.
    if (u(0, 1) < 0.3) {
      cv::Mat grain(s, s, CV_16SC3), img16;
      noise_rng.fill(grain, cv::RNG::NORMAL, cv::Scalar::all(0), cv::Scalar::all(u(1.0, 3.0)));
      img.convertTo(img16, CV_16SC3);
      img16 += grain;
      img16.convertTo(img, CV_8UC3);
    }
  }
  const std::string dir = (fs::path(opt.out_dir) / (fake ? "df" : "real")).string();
  const std::string path = (fs::path(dir) / absl::StrFormat("%06d.jpg", index / 2)).string();
  return WriteJpeg(img, u.Int(70, 95), path);
}

absl::Status MakeOne(const SynthOptions& opt, int index) {
  try {
    return MakeOneOrThrow(opt, index);
  } catch (const cv::Exception& e) {
    return absl::InternalError(absl::StrCat("synthetic image ", index, ": ", e.what()));
  }
}

}  // namespace

absl::Status GenerateSyntheticDataset(const SynthOptions& opt) {
  if (opt.count < 2 || opt.count > 10'000'000) {
    return absl::InvalidArgumentError(absl::StrCat("--count must be in [2, 10000000], got ", opt.count));
  }
  if (opt.image_size < 32 || opt.image_size > 2048) {
    return absl::InvalidArgumentError(absl::StrCat("--image-size must be in [32, 2048], got ", opt.image_size));
  }
  std::error_code ec;
  for (const char* cls : {"df", "real"}) {
    fs::create_directories(fs::path(opt.out_dir) / cls, ec);
    if (ec) return absl::InvalidArgumentError(absl::StrCat("cannot create '", opt.out_dir, "': ", ec.message()));
  }
  std::atomic<int> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<int> finished{0};
  absl::Mutex err_mu;
  absl::Status first_error;
  std::vector<std::thread> pool;
  const int threads = std::max(1, opt.threads);
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i = next++; i < opt.count; i = next++) {
        absl::Status st = MakeOne(opt, i);
        if (!st.ok()) {
          absl::MutexLock lock(&err_mu);
          if (first_error.ok()) first_error = st;
          break;
        }
        ++done;
      }
      ++finished;
    });
  }
  // Progress is reported from this thread only.
  while (finished < threads) {
    if (opt.progress) opt.progress(done, opt.count);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (auto& th : pool) th.join();
  if (opt.progress) opt.progress(done, opt.count);
  return first_error;
}

}  // namespace dfc
