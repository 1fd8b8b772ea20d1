// The served-weights file's parser on hand-made files: what the server reads
// of every imported model, so every malformed shape of it must be refused by
// name (and a valid one read back exactly).
#include <cstring>
#include <string>

#include <gtest/gtest.h>

#include "common/checksum.h"
#include "common/weights_file.h"

namespace dfc {
namespace {

template <typename T>
void Put(std::string* s, T v) {
  s->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// Magic, arch "meso4", epoch 3, then `tensors` as given, then a valid checksum.
std::string File(uint32_t count, const std::string& tensors) {
  std::string s = "DFCWTS01";
  Put<uint16_t>(&s, 5);
  s += "meso4";
  Put<int64_t>(&s, 3);
  Put<uint32_t>(&s, count);
  s += tensors;
  Put<uint32_t>(&s, Crc32c(s));
  return s;
}

std::string Tensor(const std::string& name, uint8_t dtype, const std::vector<int64_t>& dims, size_t data_bytes) {
  std::string s;
  Put<uint16_t>(&s, static_cast<uint16_t>(name.size()));
  s += name;
  Put<uint8_t>(&s, dtype);
  Put<uint8_t>(&s, static_cast<uint8_t>(dims.size()));
  for (int64_t d : dims) Put<int64_t>(&s, d);
  s.append(data_bytes, '\x01');
  return s;
}

TEST(WeightsFileTest, RoundTripsExactly) {
  const float w[6] = {1.5f, -2.0f, 0.0f, 3.25f, 1e-8f, -7.0f};
  const int64_t n = 42;
  WeightsFile f;
  f.arch = "mesoinception4";
  f.epoch = 7;
  f.tensors.push_back({"conv.weight", WeightsTensor::Dtype::kFloat32, {2, 3},
                       std::string_view(reinterpret_cast<const char*>(w), sizeof(w))});
  f.tensors.push_back({"bn.num_batches_tracked", WeightsTensor::Dtype::kInt64, {},
                       std::string_view(reinterpret_cast<const char*>(&n), sizeof(n))});
  const std::string bytes = SerializeWeightsFile(f);
  auto back = ParseWeightsFile(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->arch, "mesoinception4");
  EXPECT_EQ(back->epoch, 7);
  ASSERT_EQ(back->tensors.size(), 2u);
  EXPECT_EQ(back->tensors[0].name, "conv.weight");
  EXPECT_EQ(back->tensors[0].dims, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(back->tensors[0].data.data(), w, sizeof(w)), 0);
  EXPECT_EQ(back->tensors[1].dtype, WeightsTensor::Dtype::kInt64);
  EXPECT_TRUE(back->tensors[1].dims.empty());
  EXPECT_EQ(back->tensors[1].data.size(), 8u);
}

TEST(WeightsFileTest, EveryMalformedFileIsRefusedByName) {
  const std::string good = File(1, Tensor("w", 0, {2, 2}, 16));
  ASSERT_TRUE(ParseWeightsFile(good).ok());
  std::string flipped = good;
  flipped[30] ^= 0x10;
  struct Case {
    std::string what, bytes, error;
  };
  const std::vector<Case> cases = {
      {"no magic", "PK\x03\x04 a zip archive", "no DFCWTS01 magic"},
      {"flipped byte", flipped, "checksum mismatch"},
      {"cut short", good.substr(0, good.size() - 9), "checksum mismatch"},
      {"count beyond the data", File(2, Tensor("w", 0, {2, 2}, 16)), "tensor 1: truncated"},
      {"too many tensors", File(1u << 20, ""), "1048576 tensors"},
      {"dtype", File(1, Tensor("w", 7, {2}, 8)), "unknown dtype 7"},
      {"rank", File(1, Tensor("w", 0, {1, 1, 1, 1, 1, 1, 1, 1, 1}, 4)), "rank 9"},
      {"negative dimension", File(1, Tensor("w", 0, {-1}, 0)), "dimension -1 does not fit"},
      {"overflowing shape", File(1, Tensor("w", 0, {1 << 20, 1 << 20, 1 << 20, 1 << 20}, 0)), "does not fit the file"},
      {"short data", File(1, Tensor("w", 0, {2, 2}, 15)), "data does not fit the file"},
      {"repeated name", File(2, Tensor("w", 0, {1}, 4) + Tensor("w", 0, {1}, 4)), "name 'w' is empty or repeated"},
      {"empty name", File(1, Tensor("", 0, {1}, 4)), "is empty or repeated"},
      {"trailing bytes", File(1, Tensor("w", 0, {1}, 4) + "xyz"), "3 bytes after the last tensor"},
  };
  for (const Case& c : cases) {
    auto r = ParseWeightsFile(c.bytes);
    ASSERT_FALSE(r.ok()) << c.what;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << c.what;
    EXPECT_NE(r.status().message().find(c.error), std::string::npos) << c.what << ": " << r.status().message();
  }
}

}  // namespace
}  // namespace dfc
