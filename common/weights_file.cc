#include "common/weights_file.h"

#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/checksum.h"

namespace dfc {
namespace {

constexpr size_t kMagicSize = sizeof(kWeightsFileMagic) - 1;
constexpr uint32_t kMaxTensors = 1 << 16;
constexpr uint8_t kMaxRank = 8;

// Reads little-endian fields, refusing any read past the end.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  size_t offset() const { return at_; }
  size_t left() const { return bytes_.size() - at_; }
  bool Bytes(size_t n, std::string_view* out) {
    if (n > left()) return false;
    *out = bytes_.substr(at_, n);
    at_ += n;
    return true;
  }
  template <typename T>
  bool Int(T* out) {
    std::string_view b;
    if (!Bytes(sizeof(T), &b)) return false;
    std::memcpy(out, b.data(), sizeof(T));
    return true;
  }

 private:
  std::string_view bytes_;
  size_t at_ = 0;
};

template <typename T>
void Put(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(T));
}

size_t ElementSize(WeightsTensor::Dtype d) { return d == WeightsTensor::Dtype::kFloat32 ? 4 : 8; }

}  // namespace

bool LooksLikeWeightsFile(std::string_view bytes) {
  return bytes.size() >= kMagicSize && bytes.substr(0, kMagicSize) == std::string_view(kWeightsFileMagic, kMagicSize);
}

absl::StatusOr<WeightsFile> ParseWeightsFile(std::string_view bytes) {
  auto bad = [](size_t offset, const std::string& what) {
    return absl::DataLossError(absl::StrCat("weights file: ", what, " (offset ", offset, ")"));
  };
  if (!LooksLikeWeightsFile(bytes)) return bad(0, "not a DFC weights file (no DFCWTS01 magic)");
  if (bytes.size() < kMagicSize + 4) return bad(0, "truncated");
  const std::string_view body = bytes.substr(0, bytes.size() - 4);
  uint32_t crc = 0;
  std::memcpy(&crc, bytes.data() + body.size(), 4);
  if (Crc32c(body) != crc) return bad(body.size(), "checksum mismatch: the file is damaged");
  Reader r(body.substr(kMagicSize));
  const size_t base = kMagicSize;
  WeightsFile f;
  uint16_t arch_len = 0;
  std::string_view arch;
  if (!r.Int(&arch_len) || !r.Bytes(arch_len, &arch)) return bad(base + r.offset(), "truncated header");
  f.arch = std::string(arch);
  uint32_t count = 0;
  if (!r.Int(&f.epoch) || !r.Int(&count)) return bad(base + r.offset(), "truncated header");
  if (f.epoch < 0) return bad(base + r.offset(), absl::StrCat("epoch ", f.epoch, " is negative"));
  if (count > kMaxTensors) return bad(base + r.offset(), absl::StrCat(count, " tensors (at most ", kMaxTensors, ")"));
  std::set<std::string_view> names;
  for (uint32_t i = 0; i < count; ++i) {
    const size_t at = base + r.offset();
    WeightsTensor t;
    uint16_t name_len = 0;
    std::string_view name;
    uint8_t dtype = 0, rank = 0;
    if (!r.Int(&name_len) || !r.Bytes(name_len, &name) || !r.Int(&dtype) || !r.Int(&rank)) {
      return bad(at, absl::StrCat("tensor ", i, ": truncated"));
    }
    t.name = std::string(name);
    if (name.empty() || !names.insert(name).second) {
      return bad(at, absl::StrCat("tensor ", i, ": name '", t.name, "' is empty or repeated"));
    }
    if (dtype > 1) return bad(at, absl::StrCat("tensor '", t.name, "': unknown dtype ", int{dtype}));
    if (rank > kMaxRank) return bad(at, absl::StrCat("tensor '", t.name, "': rank ", int{rank}, " (at most 8)"));
    t.dtype = static_cast<WeightsTensor::Dtype>(dtype);
    uint64_t bytes_needed = ElementSize(t.dtype);
    for (uint8_t d = 0; d < rank; ++d) {
      int64_t dim = 0;
      if (!r.Int(&dim)) return bad(at, absl::StrCat("tensor '", t.name, "': truncated shape"));
      if (dim < 0 || static_cast<uint64_t>(dim) > r.left()) {
        return bad(at, absl::StrCat("tensor '", t.name, "': dimension ", dim, " does not fit the file"));
      }
      t.dims.push_back(dim);
      if (dim != 0 && bytes_needed > r.left() / static_cast<uint64_t>(dim)) {
        return bad(at, absl::StrCat("tensor '", t.name, "': data does not fit the file"));
      }
      bytes_needed *= static_cast<uint64_t>(dim);
    }
    if (!r.Bytes(static_cast<size_t>(bytes_needed), &t.data)) {
      return bad(at, absl::StrCat("tensor '", t.name, "': data does not fit the file"));
    }
    f.tensors.push_back(std::move(t));
  }
  if (r.left() != 0) return bad(base + r.offset(), absl::StrCat(r.left(), " bytes after the last tensor"));
  return f;
}

std::string SerializeWeightsFile(const WeightsFile& f) {
  std::string out(kWeightsFileMagic, kMagicSize);
  Put<uint16_t>(&out, static_cast<uint16_t>(f.arch.size()));
  out += f.arch;
  Put<int64_t>(&out, f.epoch);
  Put<uint32_t>(&out, static_cast<uint32_t>(f.tensors.size()));
  for (const WeightsTensor& t : f.tensors) {
    Put<uint16_t>(&out, static_cast<uint16_t>(t.name.size()));
    out += t.name;
    Put<uint8_t>(&out, static_cast<uint8_t>(t.dtype));
    Put<uint8_t>(&out, static_cast<uint8_t>(t.dims.size()));
    for (int64_t d : t.dims) Put<int64_t>(&out, d);
    out.append(t.data.data(), t.data.size());
  }
  Put<uint32_t>(&out, Crc32c(out));
  return out;
}

}  // namespace dfc
