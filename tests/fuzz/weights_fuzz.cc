// libFuzzer target: the served-weights parser (common/weights_file.h), the one
// parser dfc-server runs on files derived from uploads. The input is taken as
// a file's body and its checksum is appended, so mutations reach the fields
// behind it. Any input must parse into tensors that lie inside it and
// serialise back to the same bytes, or be refused with a named error.
// scripts/fuzz.sh builds and runs it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/checksum.h"
#include "common/weights_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  const uint32_t crc = dfc::Crc32c(bytes);
  bytes.append(reinterpret_cast<const char*>(&crc), sizeof(crc));
  auto f = dfc::ParseWeightsFile(bytes);
  if (!f.ok()) {
    if (f.status().message().empty()) std::abort();
    return 0;
  }
  for (const dfc::WeightsTensor& t : f->tensors) {
    size_t n = t.dtype == dfc::WeightsTensor::Dtype::kFloat32 ? 4 : 8;
    for (int64_t d : t.dims) n *= static_cast<size_t>(d);
    if (t.data.size() != n) std::abort();
    if (t.data.data() < bytes.data() || t.data.data() + t.data.size() > bytes.data() + bytes.size()) std::abort();
  }
  if (dfc::SerializeWeightsFile(*f) != bytes) std::abort();
  return 0;
}
