#ifndef DFC_COMMON_CHECKSUM_H_
#define DFC_COMMON_CHECKSUM_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dfc {

// CRC-32C (Castagnoli), the checksum of every shard record and shard file.
// `crc` continues a previous value, so a stream can be checksummed in pieces.
uint32_t Crc32c(const void* data, size_t size, uint32_t crc = 0);
inline uint32_t Crc32c(std::string_view s, uint32_t crc = 0) {
  return Crc32c(s.data(), s.size(), crc);
}

// Incremental 64-bit FNV-1a, used for content hashes (not for security).
class Fnv1a64 {
 public:
  void Update(const void* data, size_t size);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  uint64_t digest() const { return hash_; }
  std::string HexDigest() const;

 private:
  uint64_t hash_ = 0xcbf29ce484222325ULL;
};

}  // namespace dfc

#endif  // DFC_COMMON_CHECKSUM_H_
