#include "data_shards/synth.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "data_shards/image_codec.h"
#include "tests/test_util.h"

namespace dfc {
namespace {
namespace fs = std::filesystem;

TEST(SynthTest, DeterministicLayoutAndDecodable) {
  testing::TempDir a, b;
  SynthOptions opt;
  opt.count = 6;
  opt.seed = 42;
  opt.image_size = 64;
  opt.out_dir = a.path();
  ASSERT_TRUE(GenerateSyntheticDataset(opt).ok());
  opt.out_dir = b.path();
  opt.threads = 1;
  ASSERT_TRUE(GenerateSyntheticDataset(opt).ok());
  int n = 0;
  for (const char* cls : {"df", "real"}) {
    for (const auto& e : fs::directory_iterator(fs::path(a.path()) / cls)) {
      const std::string rel = std::string(cls) + "/" + e.path().filename().string();
      const std::string bytes = testing::ReadFileOrDie(e.path());
      EXPECT_EQ(bytes, testing::ReadFileOrDie(b.Join(rel))) << rel << " differs between runs";
      auto img = DecodeImage(bytes);
      ASSERT_TRUE(img.ok());
      EXPECT_EQ(img->width, 64);
      ++n;
    }
  }
  EXPECT_EQ(n, 6);
}

TEST(SynthTest, FakesDifferFromRealsOnlyStatistically) {
  // The df pipeline removes high-frequency detail inside the face: the mean
  // absolute Laplacian-like difference of df images must be lower on average.
  testing::TempDir dir;
  SynthOptions opt;
  opt.count = 40;
  opt.seed = 3;
  opt.out_dir = dir.path();
  ASSERT_TRUE(GenerateSyntheticDataset(opt).ok());
  auto detail = [&](const std::string& cls) {
    double sum = 0;
    int n = 0;
    for (const auto& e : fs::directory_iterator(fs::path(dir.path()) / cls)) {
      auto img = DecodeImage(testing::ReadFileOrDie(e.path()));
      const int s = img->width;
      // Centre region (the face), horizontal second difference.
      for (int y = s / 3; y < 2 * s / 3; ++y)
        for (int x = s / 3 + 1; x < 2 * s / 3 - 1; ++x) {
          const int i = (y * s + x) * 3;
          sum += std::abs(2 * img->pixels[i] - img->pixels[i - 3] - img->pixels[i + 3]);
          ++n;
        }
    }
    return sum / n;
  };
  EXPECT_LT(detail("df"), detail("real"));
}

TEST(SynthTest, RejectsAbsurdCounts) {
  SynthOptions opt;
  opt.count = 1;
  opt.out_dir = "/tmp/unused";
  auto st = GenerateSyntheticDataset(opt);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("--count"), std::string::npos);
}

}  // namespace
}  // namespace dfc
