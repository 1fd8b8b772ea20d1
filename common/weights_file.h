#ifndef DFC_COMMON_WEIGHTS_FILE_H_
#define DFC_COMMON_WEIGHTS_FILE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace dfc {

// The served-weights file: a model's named tensors and nothing else, in a
// format simple enough to read without a general-purpose parser. It is what
// dfc-server stores for an imported model (the confined converter writes it,
// serving/weights_converter.h), so the server never hands upload-derived
// bytes to libhdf5 or LibTorch's archive reader. Torch-free; little-endian:
//   "DFCWTS01", u16 arch length, arch, i64 epoch, u32 tensor count, then per
//   tensor: u16 name length, name, u8 dtype (0 float32, 1 int64), u8 rank
//   (<= 8), i64 dims[rank], the data; last, a CRC-32C of all that precedes.
struct WeightsTensor {
  enum class Dtype : uint8_t { kFloat32 = 0, kInt64 = 1 };
  std::string name;
  Dtype dtype = Dtype::kFloat32;
  std::vector<int64_t> dims;
  std::string_view data;  // into the parsed bytes (numel * element size)
};

struct WeightsFile {
  std::string arch;
  int64_t epoch = 0;
  std::vector<WeightsTensor> tensors;
};

constexpr char kWeightsFileMagic[] = "DFCWTS01";

// True when `bytes` start with the magic.
bool LooksLikeWeightsFile(std::string_view bytes);

// Parses and checks the whole file: bounds, ranks, sizes, unique names, the
// checksum and no trailing bytes. DATA_LOSS names the first thing wrong and
// where. The result points into `bytes`.
absl::StatusOr<WeightsFile> ParseWeightsFile(std::string_view bytes);

// The file's bytes (tensors' data as given, checksum appended).
std::string SerializeWeightsFile(const WeightsFile& file);

}  // namespace dfc

#endif  // DFC_COMMON_WEIGHTS_FILE_H_
